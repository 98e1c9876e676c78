"""DALL-E in miniature: a discrete VAE (stage 1), an autoregressive text-to-image prior (stage 2).

Stage 1, the dVAE, turns a 32×32 image into an h×w grid of integer codes in [0, K) and back
(the shipped one: downsample=2, a 16×16 grid; the config's default, 4, gives 8×8):

    encoder: image (B, 3, 32, 32) -> logits (B, K, h, w)       one distribution per grid cell
    codes:   argmax over K        -> (B, h, w)                 the image's "tokens"
    decoder: codebook[codes]      -> image (B, 3, 32, 32)

Three ways to make the discrete step trainable are implemented (`DVAEConfig.quantizer`):

* ``"gumbel"`` (DALL-E): Gumbel-softmax relaxation. The decoder receives the soft mixture
  Σ_j y_j e_j with y = softmax((logits + g) / τ), g ~ Gumbel(0, 1), τ annealed from 1 to 1/16,
  and the loss is the ELBO: reconstruction + β · KL(q(z|x) ‖ uniform).
* ``"straight_through"``: the same noise, but the forward pass uses the hard one-hot code and the
  gradient flows through the soft y (``hard=True`` in ``torch.nn.functional.gumbel_softmax``).
* ``"vq"`` (VQ-VAE): the encoder outputs a vector E(x) per cell and the code is the nearest
  codebook entry, argmin_j ‖E(x) − e_j‖; codebook and commitment losses, straight-through gradient.

Stage 2, `DALLEPrior`, is a GPT-style causal transformer over one stream:

    [text tokens, padded to text_length] <soi> [h·w image codes in raster order]

trained with cross-entropy on the image codes plus a small weight on the text tokens. `DALLE` is
the pipeline (like a diffusers pipeline): tokenizer + prior + dVAE, with `generate` and `rerank`.

    pipe = minimodels.pretrained("dalle")
    images = pipe.generate(["a red circle"], n_per_prompt=8, seed=0)     # (8, 3, 32, 32) in [0, 1]
    best = pipe.rerank(images, "a red circle", minimodels.pretrained("clip"))

Shipped weights: ``python -m minimodels.pretrain dvae``, then ``... pretrain dalle``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import check_int
from minimodels.data.captions import mixed_captions
from minimodels.dvae import DVAE, _check_int, _check_positive, load_dvae, prepare_images
from minimodels.layers import TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()
QUANTIZERS = ("gumbel", "straight_through", "vq")


# ----------------------------------------------------------------------------------------------
# Input checks: each error names the parameter, what was expected and what came
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Stage 2: the autoregressive prior
# ----------------------------------------------------------------------------------------------


@dataclass
class DALLEConfig:
    text_vocab_size: int = _TOKENIZER.vocab_size
    text_length: int = 16  # text is padded (or cut) to this many tokens
    codebook_size: int = 128  # K: image tokens are text_vocab_size + code
    grid: int = 8  # h = w
    dim: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 3.0
    text_loss_weight: float = 1 / 8  # DALL-E weighted text 1/8 and image 7/8

    def __post_init__(self):
        for name in ("text_vocab_size", "text_length", "codebook_size", "grid", "dim", "layers",
                     "heads"):  # fmt: skip
            _check_int(getattr(self, name), name, lo=1)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads; got {self.dim} and {self.heads}")

    @property
    def seq_len(self) -> int:
        return self.text_length + 1 + self.grid**2  # text, <soi>, image codes


class DALLEPrior(nn.Module):
    """A causal transformer over [text (text_length), <soi>, image codes (grid²)].

    One vocabulary holds both: ids < text_vocab_size are the Tokenizer's, id text_vocab_size + j
    is image code j. ``forward(tokens)`` (B, T) -> logits (B, T, V) predicting token t + 1.
    """

    config_class = DALLEConfig

    def __init__(self, config: DALLEConfig | None = None):
        super().__init__()
        self.config = c = config or DALLEConfig()
        self.vocab_size = c.text_vocab_size + c.codebook_size
        self.token_embedding = nn.Embedding(self.vocab_size, c.dim)
        self.position_embedding = nn.Parameter(torch.randn(c.seq_len, c.dim) * 0.02)
        self.blocks = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.layers)]
        )
        self.ln_f = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, self.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError("tokens must be an int64 tensor (B, T)")
        if not 1 <= tokens.shape[1] <= c.seq_len:
            raise ValueError(f"tokens must have 1 to {c.seq_len} positions; got {tokens.shape[1]}")
        T = tokens.shape[1]
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[:T]  # (B,T,C)
        for block in self.blocks:
            x = block(x, is_causal=True)  # position t sees 0..t only
        return self.head(self.ln_f(x))  # (B, T, V)

    def text_tokens(self, prompts) -> torch.Tensor:
        """Prompts -> (B, text_length) ids: [CLS] words [SEP] [PAD]..., cut to text_length."""
        c = self.config
        batch = _TOKENIZER(prompts, padding="max_length", max_length=c.text_length)
        return batch["input_ids"]

    def sequence(self, prompts, codes: torch.Tensor) -> torch.Tensor:
        """The training stream (B, seq_len): text, <soi>, codes + text_vocab_size."""
        c = self.config
        text = self.text_tokens(prompts)  # (B, L)
        soi = torch.full((len(text), 1), _TOKENIZER.soi_token_id, dtype=torch.long)
        image = codes.reshape(len(codes), -1).long().cpu() + c.text_vocab_size  # (B, h·w)
        return torch.cat([text, soi, image], 1)

    def loss(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy: image positions weighted 1, text (non-padding) `text_loss_weight`."""
        c = self.config
        tokens = tokens.to(self.device)
        logits = self(tokens[:, :-1])  # (B, T-1, V): predicts tokens[:, 1:]
        target = tokens[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T-1)
        L = c.text_length
        text_ce, text_mask = ce[:, : L - 1], target[:, : L - 1] != _TOKENIZER.pad_token_id
        image_ce = ce[:, L:]  # targets are the grid² image codes
        text_loss = (text_ce * text_mask).sum() / text_mask.sum().clamp_min(1)
        image_loss = image_ce.mean()
        return {
            "loss": image_loss + c.text_loss_weight * text_loss,
            "image": image_loss,
            "text": text_loss,
        }

    def forward_cached(self, tokens: torch.Tensor, cache: list) -> torch.Tensor:
        """`forward` for the next tokens only, given the keys and values of the earlier ones.

        tokens (B, t) sit at positions P..P+t−1, where P is how many tokens `cache` already
        holds (start with ``cache = []``); their keys and values are appended to `cache`. The
        logits (B, t, V) equal those of ``forward`` on the whole sequence, at a fraction of
        the cost: sampling 256 codes one by one re-reads the cache instead of re-running every
        earlier position at every step (the KV cache of every autoregressive sampler).
        """
        c = self.config
        P = cache[0][0].shape[2] if cache else 0
        B, T = tokens.shape
        if P + T > c.seq_len:
            raise ValueError(f"the cache holds {P} positions; {T} more exceed {c.seq_len}")
        if not cache:
            cache.extend([] for _ in self.blocks)  # one [K, V] per layer
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[P : P + T]
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, is_causal=True, kv_cache=layer_cache)  # position P + t sees 0..P + t
        return self.head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def sample_codes(
        self,
        prompts,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample image codes (B, grid, grid) for B prompts, one code at a time, raster order."""
        c = self.config
        seq = self.sequence(prompts, torch.zeros(len(prompts), 0, dtype=torch.long))
        seq = seq.to(self.device)  # (B, L + 1): text and <soi>
        cache: list = []
        step_in = seq  # the first step reads the whole prompt, later steps one new code
        for _ in range(c.grid**2):
            logits = self.forward_cached(step_in, cache)[:, -1, c.text_vocab_size :]  # (B, K)
            logits = logits / temperature
            if top_k is not None and top_k < c.codebook_size:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(self.device)  # (B,1)
            step_in = nxt + c.text_vocab_size
            seq = torch.cat([seq, step_in], 1)
        return (seq[:, c.text_length + 1 :] - c.text_vocab_size).view(-1, c.grid, c.grid)


class DALLE:
    """The text-to-image pipeline: tokenizer + prior (stage 2) + dVAE decoder (stage 1)."""

    def __init__(self, prior: DALLEPrior, dvae: DVAE):
        if not isinstance(prior, DALLEPrior):
            raise TypeError(f"prior must be a DALLEPrior; got {type(prior).__name__}")
        if not isinstance(dvae, DVAE):
            raise TypeError(f"dvae must be a DVAE; got {type(dvae).__name__}")
        pc, dc = prior.config, dvae.config
        if pc.codebook_size != dc.codebook_size or pc.grid != dc.grid:
            raise ValueError(
                f"prior and dVAE disagree: prior K={pc.codebook_size}, grid={pc.grid}; "
                f"dVAE K={dc.codebook_size}, grid={dc.grid}"
            )
        self.prior, self.dvae, self.tokenizer = prior.eval(), dvae.eval(), _TOKENIZER

    def to(self, device) -> DALLE:
        self.prior.to(device)
        self.dvae.to(device)
        return self

    @torch.no_grad()
    def generate(
        self,
        prompts,
        n_per_prompt: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        return_codes: bool = False,
    ):
        """Images for each prompt: float (len(prompts) · n_per_prompt, 3, H, W) in [0, 1].

        Rows are grouped by prompt: rows i·n .. (i+1)·n − 1 belong to prompts[i]. Sampling
        uses `generator`, else a generator seeded with `seed` (same seed, same images).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of strings; got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: expected at least one prompt")
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompts must all be strings")
        n_per_prompt = check_int(n_per_prompt, "n_per_prompt", 1, 10_000)
        temperature = _check_positive(temperature, "temperature")
        if top_k is not None:
            top_k = _check_int(top_k, "top_k", lo=1)
        if generator is None:
            generator = torch.Generator().manual_seed(
                0 if seed is None else _check_int(seed, "seed", 0)
            )
        elif not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        expanded = [p for p in prompts for _ in range(n_per_prompt)]
        codes = torch.cat(
            [
                self.prior.sample_codes(expanded[s : s + 256], temperature, top_k, generator)
                for s in range(0, len(expanded), 256)
            ]
        )  # (N, h, w)
        images = self.dvae.decode(codes).cpu()  # (N, 3, H, W)
        return (images, codes.cpu()) if return_codes else images

    @torch.no_grad()
    def rerank(self, images, prompt: str, clip) -> torch.Tensor:
        """Indices of `images` ordered by the CLIP similarity to `prompt`, best first."""
        return rerank(images, prompt, clip)


@torch.no_grad()
def rerank(images, prompt: str, clip) -> torch.Tensor:
    """Order candidate images by cos(CLIP image embedding, CLIP text embedding), best first.

    images (N, 3, H, W) in [0, 1] (resized to CLIP's size if needed) -> indices (N,).
    """
    from minimodels.clip import CLIP

    if not isinstance(clip, CLIP):
        raise TypeError(f"clip must be a minimodels CLIP model; got {type(clip).__name__}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}")
    x = prepare_images(images, images.shape[-1] if isinstance(images, torch.Tensor) else 32)
    size = clip.config.image_size
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    clip.eval()
    image_emb = clip.encode_image(x.clamp(0, 1), normalize=True)  # (N, E)
    text_emb = clip.encode_text(_TOKENIZER([prompt]), normalize=True)  # (1, E)
    return (image_emb @ text_emb.T).squeeze(1).argsort(descending=True).cpu()


# ----------------------------------------------------------------------------------------------
# Training data for the prior, training, evaluation
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
        images, scenes = sw.generate(
            "train", count, seed=5_000_000 * (seed + 1) + i, image_size=size,
            min_objects=max_obj, max_objects=max_obj,
        )  # fmt: skip
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        codes += [dvae.encode(x[s : s + batch]).cpu() for s in range(0, count, batch)]
        captions += mixed_captions(scenes, rng, short=0.3)
    codes = torch.cat(codes)
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
    """Train the prior on `n_data` scenes encoded by `dvae` (see `prior_dataset`)."""
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    dvae.eval()
    captions, codes = prior_dataset(dvae, n_data, seed)
    if config is None:
        config = DALLEConfig(codebook_size=dvae.config.codebook_size, grid=dvae.config.grid)
    model = DALLEPrior(config).to(get_device(device))
    tokens = model.sequence(captions, codes)  # (n, seq_len), built once
    g = torch.Generator().manual_seed(seed)

    def batch(step):
        return tokens[torch.randint(0, len(tokens), (batch_size,), generator=g)]

    history = fit(
        model, lambda m, b: m.loss(b)["loss"], batch, steps=steps, time_budget=time_budget,
        lr=lr, warmup=min(100, steps // 10), cosine=True, weight_decay=0.01,
        progress=progress, desc="dalle prior",
    )  # fmt: skip
    model.eval()
    return model, history


def faithful(readings: list[dict], color: str, shape: str) -> list[bool]:
    """Whether the judge read an object of the asked colour and shape in each image."""
    return [
        any(o["color"] == color and o["shape"] == shape for o in r["objects"]) for r in readings
    ]


@torch.no_grad()
def evaluate_dalle(
    pipe: DALLE,
    judge,
    clip,
    seed: int = 0,
    n: int = 100,
    candidates: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> dict:
    """prompt_faithfulness (one sample per prompt), _reranked (best of `candidates` by CLIP),
    _heldout (colour-shape pairs never seen in training). Prompts: 'a {colour} {shape}';
    samples drawn with `temperature` and `top_k` (see `DALLE.generate`)."""
    rng = np.random.default_rng([seed, 11])
    out = {}
    pairs = {"train": sw.TRAIN_PAIRS, "heldout": sw.HELDOUT_PAIRS}
    for split, key in (
        ("train", "prompt_faithfulness"),
        ("heldout", "prompt_faithfulness_heldout"),
    ):
        chosen = [pairs[split][i] for i in rng.integers(len(pairs[split]), size=n)]
        prompts = [f"a {c} {s}" for c, s in chosen]
        per = candidates if split == "train" else 1
        images = pipe.generate(prompts, per, temperature, top_k, seed=seed)  # (n·per, 3, H, W)
        readings = judge.read(images)
        ok = np.array(
            [faithful([r], c, s)[0] for r, (c, s) in zip(readings, np.repeat(chosen, per, 0))]
        ).reshape(n, per)
        out[key] = round(float(ok[:, 0].mean()), 4)
        if split == "train":
            best = [
                int(rerank(images[i * per : (i + 1) * per], prompts[i], clip)[0]) for i in range(n)
            ]
            out["prompt_faithfulness_reranked"] = round(float(ok[np.arange(n), best].mean()), 4)
            out["prompt_faithfulness_any_of_8"] = round(float(ok.any(1).mean()), 4)
    return out


def load_pretrained(device=None) -> DALLE:
    """The shipped pipeline: prior (weights/dalle.safetensors) + dVAE (weights/dvae)."""
    from minimodels.checkpoint import load_model, weights_path

    prior = load_model(DALLEPrior, weights_path("dalle"), device=device)
    return DALLE(prior, load_dvae(device=device))
