"""Recipe of LLaVA: the two training stages, the blind baseline, the evaluation, the weights.

The model (projector, merge, processor, generate) is in ``minimodels/llava.py``; this module is
what it took to make and measure the shipped LLaVA from the shipped CLIP and GPT::

    from minimodels.recipes import llava as recipe
    model, stage1, blind, losses = recipe.train_llava(stage1_steps=40, stage2_steps=200)
    recipe.evaluate_llava(seed=0, n=500)   # the shipped models' figures

    python -m minimodels.pretrain llava    # also writes llava_stage1.* and llava_blind.*
    python -m minimodels.evaluate llava
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from minimodels.checkpoint import load_model, read_metadata, save_model, weights_path
from minimodels.data.images import to_tensor
from minimodels.data.instructions import (
    DETAIL_PROMPTS,
    conversation,
    instruction_data,
    stage1_data,
)
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.data.world import COLORS, SHAPES
from minimodels.gpt import GPT, TOKENIZER
from minimodels.llava import IMAGE_TOKEN, LlavaForConditionalGeneration, chat_prompt
from minimodels.recipes.clip import load_clip
from minimodels.recipes.gpt import load_gpt
from minimodels.train import fit, seed_everything

# What a stage-2 example is, and how often (the fourth kind: PaLI-style task prefixes).
STAGE2_MIX = {"conversation": 0.5, "detailed description": 0.15, "reasoning": 0.15,
              "task prefix": 0.2}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The shipped models
# ----------------------------------------------------------------------------------------------


def load_llava(device=None) -> LlavaForConditionalGeneration:
    """The shipped LLaVA after both stages (minimodels/weights/llava.safetensors)."""
    return load_model(LlavaForConditionalGeneration, weights_path("llava"), device=device)


def load_stage1(device=None) -> LlavaForConditionalGeneration:
    """The same run's model after stage 1 only (projector trained, GPT untouched)."""
    return load_model(LlavaForConditionalGeneration, weights_path("llava_stage1"), device=device)


def load_blind(device=None) -> GPT:
    """The blind baseline: the shipped GPT fine-tuned on the same questions, no image."""
    return load_model(GPT, weights_path("llava_blind"), device=device)


def pretrain_llava(steps: int, seed: int, device=None):
    """The shipped recipe: stage 1 (steps // 5), stage 2 (steps), the blind LM (steps // 3),
    on 20 000 scenes, each 4×4 block of patch features concatenated (pool_mode="unshuffle").
    Writes the stage-1 model and the blind LM beside the weights; returns (model, losses)."""
    model, stage1, blind, history = train_llava(
        stage1_steps=steps // 5, stage2_steps=steps, blind_steps=steps // 3, seed=seed,
        n_scenes=20_000, config_kwargs={"pool_mode": "unshuffle"}, device=device,
    )  # fmt: skip
    command = f"python -m minimodels.pretrain llava --steps {steps} --seed {seed}"
    save_companions(stage1, blind, command)
    return model, history


def save_companions(stage1: LlavaForConditionalGeneration, blind: GPT, command: str) -> None:
    """Write the stage-1 model and the blind LM to minimodels/weights/llava_{stage1,blind}.*,
    keeping the "notes" of the files they replace (as `pretrain` does for llava itself)."""
    for model, name in ((stage1, "llava_stage1"), (blind, "llava_blind")):
        path = weights_path(name)
        notes = read_metadata(path).get("notes") if path.with_suffix(".json").exists() else None
        extra = {"training": {"command": command, "written_with": "llava (same run)"}}
        save_model(model, path, extra={**extra, **({"notes": notes} if notes else {})})


# ----------------------------------------------------------------------------------------------
# Training: the two stages, and the blind baseline
# ----------------------------------------------------------------------------------------------


class FeatureBank:
    """Scenes of the `train` split with their frozen CLIP features, computed once: the tower
    is frozen, so Z_v never changes and need not be recomputed at every step."""

    def __init__(self, model: LlavaForConditionalGeneration, n: int, seed: int = 0):
        size = model.config.vision_config.image_size
        self.scenes = sample_scenes("train", n, seed=3_000_000 + seed, image_size=size)
        feats = []
        for s in range(0, n, 500):
            images = to_tensor(render(self.scenes[s : s + 500], size))  # uint8 (500, 3, H, W)
            feats.append(model.vision_features(images).cpu())  # Z_v: (500, N, D)
        self.features = torch.cat(feats)  # (n, N, D)

    def batch(self, model, step: int, batch_size: int, make: Callable, seed: int = 0,
              with_image: bool = True) -> dict:  # fmt: skip
        """batch_size scenes drawn for `step`, each made into a conversation by
        make(scene, rng) -> [(question, answer), ...]: the processor's ids, mask and labels,
        and the scenes' features (B, N, D) unless with_image=False (the blind baseline)."""
        rng = np.random.default_rng([seed, step, 13])
        idx = rng.choice(len(self.scenes), size=batch_size, replace=False)
        convs = [make(self.scenes[i], rng) for i in idx]
        batch = model.processor.training_batch(convs, with_image=with_image)
        if with_image:
            batch["vision_features"] = self.features[torch.as_tensor(idx)]
        return batch


def stage2_maker(scene: dict, rng: np.random.Generator) -> list[tuple[str, str]]:
    """A stage-2 conversation: its kind drawn from STAGE2_MIX."""
    kinds = list(STAGE2_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=list(STAGE2_MIX.values())))]
    return instruction_data(scene, kind, rng)


def llava_loss(model: LlavaForConditionalGeneration, batch: dict) -> torch.Tensor:
    """The answer tokens' loss (labels −100 on the image and the prompt)."""
    return model(**batch).loss


def blind_loss(lm: GPT, batch: dict) -> torch.Tensor:
    """The same loss for the GPT alone, on conversations without the image."""
    return lm(**batch).loss


def count_trainable(model: nn.Module) -> int:
    """Parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_stage(model: LlavaForConditionalGeneration, stage: int) -> None:
    """Stage 1: only the projector trains. Stage 2: projector and LM. CLIP: always frozen."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2; got {stage!r}")
    model.vision_tower.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    model.language_model.requires_grad_(stage == 2)


def train_llava(
    stage1_steps: int = 300,
    stage2_steps: int = 1200,
    blind_steps: int = 500,
    batch_size: int = 48,
    seed: int = 0,
    n_scenes: int = 6000,
    config_kwargs: dict | None = None,
    progress: bool = True,
    device=None,
):
    """Both stages from the shipped CLIP and GPT, plus the blind baseline.

    Returns (stage-2 model, stage-1 model, blind GPT, loss history of stage 2)."""
    seed_everything(seed)
    clip, lm = load_clip(device), load_gpt(device)  # the shipped ones
    model = LlavaForConditionalGeneration.from_parts(clip, lm, **(config_kwargs or {}))
    bank = FeatureBank(model, n_scenes, seed)

    set_stage(model, 1)
    fit(model, llava_loss, lambda s: bank.batch(model, s, batch_size, stage1_data, seed),
        steps=stage1_steps, lr=2e-3, warmup=30, cosine=True, progress=progress,
        desc="llava stage 1")  # fmt: skip
    stage1 = copy.deepcopy(model).eval()

    set_stage(model, 2)
    history = fit(
        model, llava_loss, lambda s: bank.batch(model, s, batch_size, stage2_maker, seed + 1),
        steps=stage2_steps, lr=2e-3, warmup=50, cosine=True, progress=progress,
        desc="llava stage 2",
    )  # fmt: skip
    model.eval()

    blind = copy.deepcopy(lm).train().requires_grad_(True)
    fit(blind, blind_loss,
        lambda s: bank.batch(model, s, batch_size, conversation, seed + 1, with_image=False),
        steps=blind_steps, lr=1e-3, warmup=50, cosine=True, progress=progress,
        desc="blind LM")  # fmt: skip
    blind.eval()
    return model, stage1, blind, history


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_llava(seed: int = 0, n: int = 500, device=None) -> dict:
    """The shipped models on n fresh `test` scenes, one question each: exact-match VQA
    accuracy of LLaVA, of the blind LM and of the stage-1 model, and the share of detailed
    descriptions that name exactly the scene's colour-shape pairs (caption_attr_acc)."""
    model, stage1, blind = load_llava(device), load_stage1(device), load_blind(device)
    images, scenes, qa = evaluation_set(seed, n, model.config.vision_config.image_size)
    blind_answers = _batched(lambda q: answer_blind(blind, q), [q for q, _ in qa])
    return {
        "vqa_acc": round(vqa_accuracy(model, images, qa), 4),
        "blind_vqa_acc": round(float(np.mean([a == g for a, (_, g) in zip(blind_answers, qa)])), 4),
        "stage1_only_vqa_acc": round(vqa_accuracy(stage1, images, qa), 4),
        "caption_attr_acc": round(caption_attr_accuracy(model, images, scenes), 4),
        "n": int(n),
    }


def evaluation_set(seed: int, n: int, image_size: int = 32):
    """n `test` scenes with one of their questions each: uint8 images (n, 3, H, W), the
    scenes, and [(question, answer), ...]."""
    images, scenes = generate("test", n, seed=seed, image_size=image_size)
    rng = np.random.default_rng([seed, 17])
    qa = []
    for s in scenes:
        i = int(rng.integers(len(s["questions"])))
        qa.append((s["questions"][i], s["answers"][i]))
    return to_tensor(images), scenes, qa


@torch.no_grad()
def answer_blind(lm: GPT, questions: Sequence[str], max_new_tokens: int = 4) -> list[str]:
    """The blind LM's answers: the same chat template with no image."""
    rows = [TOKENIZER.encode(chat_prompt(q), add_special_tokens=False) for q in questions]
    T = max(len(r) for r in rows)
    ids = torch.tensor([[TOKENIZER.pad_token_id] * (T - len(r)) + r for r in rows])  # left-padded
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    new = lm.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens)[:, T:]
    return [TOKENIZER.decode(r) for r in new.cpu()]


def _batched(fn, items, images=None, size: int = 250) -> list:
    """fn over chunks of `size` items (and their images): the answers, in order."""
    out = []
    for s in range(0, len(items), size):
        if images is None:
            out += fn(items[s : s + size])
        else:
            out += fn(images[s : s + size], items[s : s + size])
    return out


def vqa_accuracy(model: LlavaForConditionalGeneration, images, qa) -> float:
    """Share of greedy answers (up to 4 words) equal to the true answer."""
    answers = _batched(
        lambda im, q: model.generate(im, [f"{IMAGE_TOKEN} {x}" for x in q], max_new_tokens=4),
        [q for q, _ in qa],
        images,
    )
    return float(np.mean([a == gold for a, (_, gold) in zip(answers, qa)]))


def pairs_in_text(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a description names, e.g. {('red', 'circle')}."""
    words = text.replace(",", " ").split()
    return {(a, b) for a, b in zip(words, words[1:]) if a in COLORS and b in SHAPES}


def caption_attr_accuracy(model: LlavaForConditionalGeneration, images, scenes) -> float:
    """Share of detailed descriptions whose colour-shape pairs are exactly the scene's."""
    texts = _batched(
        lambda im, p: model.generate(im, p, max_new_tokens=40),
        [f"{IMAGE_TOKEN} {DETAIL_PROMPTS[0]}"] * len(scenes),
        images,
    )
    truth = [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes]
    return float(np.mean([pairs_in_text(t) == pairs for t, pairs in zip(texts, truth)]))
