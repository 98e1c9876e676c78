"""Recipe of the DALL-E prior: its training data, training, evaluation and loading.

    python -m minimodels.pretrain dalle      # needs the shipped dVAE; 3000 steps, about 45 min
    python -m minimodels.evaluate dalle      # the judge reads samples for 'a {colour} {shape}'

`load_dalle` gives the whole text-to-image pipeline, `DALLEPipeline(prior, dvae)`.
"""

from __future__ import annotations

import numpy as np
import torch

from minimodels.checkpoint import load_model, weights_path
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.data.captions import mixed_captions
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate
from minimodels.data.world import HELDOUT_PAIRS, TRAIN_PAIRS
from minimodels.dvae import DVAE
from minimodels.pipelines import DALLEPipeline
from minimodels.recipes.clip import load_clip
from minimodels.recipes.dvae import load_dvae
from minimodels.recipes.judge import load_judge
from minimodels.train import fit, get_device, seed_everything


def load_dalle(device=None) -> DALLEPipeline:
    """The shipped pipeline: prior (weights/dalle.safetensors) + dVAE (weights/dvae)."""
    prior = load_model(DALLEPrior, weights_path("dalle"), device=device)
    return DALLEPipeline(prior, load_dvae(device=device))


def pretrain_dalle(steps: int, seed: int, device=None):
    """The shipped recipe: the prior over [text, <soi>, 256 codes of the shipped dVAE], trained
    on 20,000 encoded scenes (75 % single objects) in batches of 32."""
    return train_prior(load_dvae(device=device), steps=steps, batch_size=32, seed=seed,
                       n_data=20_000, device=device)  # fmt: skip


@torch.no_grad()
def evaluate_dalle(
    seed: int = 0,
    n: int = 200,
    device=None,
    pipe: DALLEPipeline | None = None,
    judge=None,
    clip=None,
    candidates: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 2.0,
) -> dict:
    """How often the judge reads the asked colour and shape in samples for 'a {colour} {shape}'.

    n prompts of colour-shape pairs seen in training, and n of pairs never seen (_heldout),
    `candidates` samples each with classifier-free guidance at `guidance_scale` (against the
    empty prompt): prompt_faithfulness[_heldout] for the first sample, _reranked for CLIP's
    pick of the candidates, _any_of_8 when at least one is right; _no_guidance: one sample per
    prompt without guidance (w = 1). Samples are drawn with `temperature` and `top_k`. The
    shipped pipeline, judge and CLIP unless given.
    """
    pipe = pipe or load_dalle(device)
    judge = judge or load_judge(device)
    clip = clip or load_clip(device)
    rng = np.random.default_rng([seed, 11])
    out: dict = {"guidance_scale": guidance_scale}
    for split, pairs in (("", TRAIN_PAIRS), ("_heldout", HELDOUT_PAIRS)):
        chosen = [pairs[i] for i in rng.integers(len(pairs), size=n)]
        prompts = [f"a {c} {s}" for c, s in chosen]
        key = f"prompt_faithfulness{split}"
        for w, per, tail in ((guidance_scale, candidates, ""), (1.0, 1, "_no_guidance")):
            generator = torch.Generator().manual_seed(seed)
            images = pipe(prompts, num_images_per_prompt=per, guidance_scale=w,
                          temperature=temperature, top_k=top_k, generator=generator)  # fmt: skip
            readings = judge.read(images)  # images (n·per, 3, H, W), grouped by prompt
            ok = np.array(
                [faithful([r], c, s)[0] for r, (c, s) in zip(readings, np.repeat(chosen, per, 0))]
            ).reshape(n, per)  # ok[i, j]: sample j of prompt i is right
            out[key + tail] = round(float(ok[:, 0].mean()), 4)
            if tail:
                continue
            best = [int(pipe.rerank(images[i * per : (i + 1) * per], prompts[i], clip)[0])
                    for i in range(n)]  # fmt: skip
            out[f"{key}_reranked"] = round(float(ok[np.arange(n), best].mean()), 4)
            out[f"{key}_any_of_{candidates}"] = round(float(ok.any(1).mean()), 4)
    return out


def faithful(readings: list[dict], color: str, shape: str) -> list[bool]:
    """Whether the judge read an object of the asked colour and shape in each image."""
    return [
        any(o["color"] == color and o["shape"] == shape for o in r["objects"]) for r in readings
    ]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def prior_dataset(dvae: DVAE, n: int, seed: int = 0, single: float = 0.75, batch: int = 500):
    """n `train` scenes encoded once: (captions list, codes (n, h, w)).

    A share `single` of the scenes holds one object, the rest two: single objects dominate so
    that a small prior learns colour and shape well within its CPU budget.
    """
    rng = np.random.default_rng([seed, 5])
    n_single = int(round(n * single))
    size = dvae.config.image_size
    captions, codes = [], []
    for i, (count, max_obj) in enumerate(((n_single, 1), (n - n_single, 2))):
        if count == 0:
            continue
        images, scenes = generate(
            "train", count, seed=5_000_000 * (seed + 1) + i, image_size=size,
            min_objects=max_obj, max_objects=max_obj,
        )  # fmt: skip
        x = to_tensor(images)  # uint8 (count, 3, H, W)
        codes += [dvae.encode(x[s : s + batch]).cpu() for s in range(0, count, batch)]
        captions += mixed_captions(scenes, rng, short=0.3)
    codes = torch.cat(codes)  # (n, h, w)
    perm = torch.from_numpy(rng.permutation(n))
    return [captions[i] for i in perm.tolist()], codes[perm]


def train_prior(
    dvae: DVAE,
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: DALLEConfig | None = None,
    n_data: int = 40_000,
    time_budget: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[DALLEPrior, list[float]]:
    """Train the prior on `n_data` scenes encoded by `dvae` (see `prior_dataset`); returns the
    prior (eval mode) and the loss of every step."""
    seed_everything(seed)
    dvae.eval()
    captions, codes = prior_dataset(dvae, n_data, seed)
    if config is None:
        config = DALLEConfig(codebook_size=dvae.config.codebook_size, grid=dvae.config.grid)
    model = DALLEPrior(config).to(get_device(device))
    tokens = model.sequence(captions, codes)  # (n, seq_len), built once
    g = torch.Generator().manual_seed(seed)

    def batch(step):
        return tokens[torch.randint(0, len(tokens), (batch_size,), generator=g)]  # (B, seq_len)

    history = fit(
        model, lambda m, b: m.loss(b)["loss"], batch, steps=steps, time_budget=time_budget,
        lr=lr, warmup=min(100, steps // 10), cosine=True, weight_decay=0.01,
        progress=progress, desc="dalle prior",
    )  # fmt: skip
    model.eval()
    return model, history
