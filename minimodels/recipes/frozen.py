"""Recipe of the few-shot Frozen: meta-training on episodes, accuracy against the number of shots.

The model is `minimodels.frozen.Frozen` (a vision encoder whose output is a visual prefix of the
GPT); the task is `minimodels.data.fewshot` (words for colours that only the prompt's examples
define). What it took to make and measure the shipped model::

    from minimodels.recipes import frozen as recipe
    model, losses = recipe.train_frozen(steps=200)
    recipe.evaluate_frozen(seed=0, n=400)    # accuracy at 0, 1, 2 and 4 shots, and chance

    python -m minimodels.pretrain frozen
    python -m minimodels.evaluate frozen

Frozen kept its 7-billion-parameter language model frozen: in-context learning came with it.
Our GPT (361k parameters, ShapeWorld captions only) has none: shown "<image> alto. <image> ?"
it has no reason to repeat a word of the prompt. So the shipped model is trained in two stages:

1. the vision encoder learns to name colours ('<image> red'), the GPT frozen (Frozen's encoder
   learnt from captions);
2. the encoder is frozen and the GPT's blocks are meta-trained on few-shot prompts (its word and
   position embeddings stay frozen): the model learns to read examples, never a fixed meaning
   of the words, which change every prompt.

Training both at once in stage 2 (encoder from scratch, one stage) left the loss at the level
of guessing among the prompt's words after 2000 steps: the GPT could not learn to match
pictures whose codes kept moving.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from minimodels.checkpoint import load_model, weights_path
from minimodels.checks import check_int
from minimodels.data.fewshot import (
    IMAGE,
    LABEL_WORDS,
    episode_images,
    fewshot_episodes,
    ideal_accuracy,
)
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import sample_scenes
from minimodels.frozen import Frozen, FrozenConfig
from minimodels.gpt import GPT, IGNORE_INDEX, TOKENIZER, GPTConfig
from minimodels.recipes.gpt import load_gpt
from minimodels.train import fit, get_device, seed_everything

SHOTS = (0, 1, 2, 4)  # what evaluate_frozen reports
TRAIN_SHOTS = 7  # training prompts: 7 examples (colours may repeat) and a query, 8 words
IMAGE_SIZE = 16  # colours are all the encoder must see: small pictures, a small CNN
CONFIG = dict(image_size=IMAGE_SIZE, channels=(16, 32, 32), num_prefix_tokens=2)


class FewShotFrozen(Frozen):
    """`Frozen` around a GPT of the shipped GPT's shape, built from a FrozenConfig alone (what
    `load_model` needs to rebuild the shipped weights, LM included)."""

    config_class = FrozenConfig

    def __init__(self, config: FrozenConfig | None = None):
        config = config or FrozenConfig(lm_dim=GPTConfig().n_embd, **CONFIG)
        super().__init__(GPT(GPTConfig(n_embd=config.lm_dim)), config)


def load_frozen(device=None) -> FewShotFrozen:
    """The shipped few-shot Frozen (minimodels/weights/frozen.safetensors)."""
    return load_model(FewShotFrozen, weights_path("frozen"), device=device)


def pretrain_frozen(steps: int, seed: int, device=None) -> tuple[FewShotFrozen, list[float]]:
    """The shipped recipe: from the shipped GPT, steps // 5 steps of naming colours, then
    `steps` steps of batches of 32 prompts of 8 words each, lr 2e-3, cosine decay."""
    return train_frozen(steps=steps, colour_steps=steps // 5, seed=seed, device=device)


# ----------------------------------------------------------------------------------------------
# Prompts: the processor's work (expand each <image> into k placeholders, label the answer)
# ----------------------------------------------------------------------------------------------


def encode_episodes(episodes: Sequence[dict], num_prefix_tokens: int, with_answer: bool = True):
    """Token ids of '<bos> <image> alto. … <image> answer' with each <image> repeated k
    times (one placeholder per visual word); labels on every word that follows an image (the
    examples' words, predictable once their colour has been seen, and the answer).

    Episodes must have the same number of shots (so the rows have the same length)."""
    k = check_int(num_prefix_tokens, "num_prefix_tokens", 1)
    texts = []
    for e in episodes:
        prompt = e["prompt"].replace(IMAGE, " ".join([IMAGE] * k))
        texts.append(f"<bos> {prompt}" + (f" {e['answer']}" if with_answer else ""))
    batch = TOKENIZER(texts, add_special_tokens=False, padding=True)
    if not bool(batch["attention_mask"].all()):
        raise ValueError("episodes must all have the same number of shots")
    ids = batch["input_ids"]
    after_image = torch.zeros_like(ids, dtype=torch.bool)
    after_image[:, 1:] = ids[:, :-1] == TOKENIZER.image_token_id  # the word after each image
    after_image &= ids != TOKENIZER.image_token_id  # a word, not the image's next placeholder
    labels = ids.masked_fill(~after_image, IGNORE_INDEX)
    if not with_answer:
        labels[:] = IGNORE_INDEX
    return {**batch, "labels": labels}


def episode_batch(episodes: Sequence[dict], num_prefix_tokens: int, with_answer: bool = True):
    """Ids, mask, labels and the pictures (uint8 (B, shots + 1, 3, H, W)) of episodes."""
    images = episode_images(episodes)  # (B, M, H, W, 3)
    B, M = images.shape[:2]
    pixels = to_tensor(images.reshape(B * M, *images.shape[2:]))  # (B·M, 3, H, W)
    batch = encode_episodes(episodes, num_prefix_tokens, with_answer)
    return {**batch, "images": pixels.view(B, M, *pixels.shape[1:])}


def training_batch(step: int, num_prefix_tokens: int, batch_size: int = 32, seed: int = 0):
    """Fresh `train` prompts for step `step`: TRAIN_SHOTS examples whose colours may repeat,
    so most words can be read off an earlier example (a dense signal for reading examples)."""
    stream = 4_000_000 * (seed + 1) + step  # apart from the seeds evaluation uses
    episodes = fewshot_episodes("train", batch_size, TRAIN_SHOTS, seed=stream,
                                image_size=IMAGE_SIZE, distinct=False)  # fmt: skip
    return episode_batch(episodes, num_prefix_tokens)


def colour_batch(step: int, num_prefix_tokens: int, batch_size: int = 32, seed: int = 0):
    """Stage 1, captioning as Frozen was trained: '<bos> <image> red' for one-object scenes."""
    stream = 5_000_000 * (seed + 1) + step
    scenes = sample_scenes("train", batch_size, seed=stream, image_size=IMAGE_SIZE, max_objects=1)
    episodes = [{"scenes": [s], "prompt": IMAGE, "answer": s["objects"][0]["color"]}
                for s in scenes]  # fmt: skip
    return episode_batch(episodes, num_prefix_tokens)


def fewshot_loss(model: Frozen, batch: dict) -> torch.Tensor:
    """The next-token loss of the words that follow an image."""
    return model.forward_interleaved(
        batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"]
    ).loss


def train_frozen(
    steps: int = 2500,
    colour_steps: int = 500,
    batch_size: int = 32,
    seed: int = 0,
    lr: float = 2e-3,
    progress: bool = True,
    device=None,
) -> tuple[FewShotFrozen, list[float]]:
    """Stage 1 trains Frozen's vision encoder to name colours ('<image> red'), with the GPT
    frozen; stage 2 freezes the encoder and meta-trains the GPT's blocks on few-shot prompts.
    Returns (model in eval mode, the losses of stage 2)."""
    seed_everything(seed)
    device = get_device(device)
    model = FewShotFrozen().to(device)
    model.lm.load_state_dict(load_gpt(device).state_dict())  # the shipped GPT's weights
    k = model.num_prefix_tokens
    if colour_steps:  # stage 1: the encoder learns to see colours (Frozen trained on captions)
        fit(model, fewshot_loss, lambda step: colour_batch(step, k, batch_size, seed),
            steps=colour_steps, lr=lr, warmup=min(50, colour_steps // 2), progress=progress,
            desc="frozen stage 1: colours")  # fmt: skip
        model.vision_encoder.requires_grad_(False)  # then it stays as it is
    model.lm.blocks.requires_grad_(True)  # stage 2, meta-training: the blocks learn to read
    model.lm.ln_f.requires_grad_(True)  # examples (word and position embeddings stay frozen)
    history = fit(
        model, fewshot_loss, lambda step: training_batch(step, k, batch_size, seed),
        steps=steps, lr=lr, warmup=min(100, steps // 2), cosine=True, weight_decay=0.01,
        progress=progress, desc="frozen few-shot",
    )  # fmt: skip
    return model.eval(), history


# ----------------------------------------------------------------------------------------------
# Answers and evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def answer_episodes(model: Frozen, episodes: Sequence[dict]) -> list[str]:
    """The model's word for each query: the most likely next token after '… <image>'."""
    batch = episode_batch(episodes, model.num_prefix_tokens, with_answer=False)
    logits = model.forward_interleaved(batch["images"], batch["input_ids"]).logits[:, -1]
    return TOKENIZER.convert_ids_to_tokens(logits.argmax(-1).cpu())


def fewshot_accuracy(model: Frozen, shots: int, n: int, seed: int = 0, split: str = "test"):
    """Share of n fresh episodes with `shots` examples whose query the model names right."""
    episodes = fewshot_episodes(split, n, shots, seed=seed, image_size=IMAGE_SIZE)
    answers = []
    for s in range(0, n, 250):
        answers += answer_episodes(model, episodes[s : s + 250])
    return float(np.mean([a == e["answer"] for a, e in zip(answers, episodes)]))


def evaluate_frozen(seed: int = 0, n: int = 400, device=None, model: Frozen | None = None):
    """The shipped model (unless `model` is given) on n fresh `test` episodes per number of
    shots: fewshot_acc {"0": …, "1": …, "2": …, "4": …}; chance (1 / the number of words);
    and ideal, the accuracy of a perfect reader of the examples (`fewshot.ideal_accuracy`)."""
    model = (model or load_frozen(device)).eval()
    return {
        "fewshot_acc": {str(k): round(fewshot_accuracy(model, k, n, seed), 4) for k in SHOTS},
        "chance": round(1 / len(LABEL_WORDS), 4),
        "ideal": {str(k): round(ideal_accuracy(k), 4) for k in SHOTS},
        "n": int(n),
    }
