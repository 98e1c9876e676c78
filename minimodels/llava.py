"""LLaVA from scratch: a frozen image encoder, a projector, and a language model.

Liu et al. (2023), "Visual Instruction Tuning"; Liu et al. (2024), "Improved Baselines with
Visual Instruction Tuning" (LLaVA-1.5). Three parts, and where they live here::

    Z_v = g(X_v)          vision tower: the shipped CLIP image encoder, frozen; its patch
                          (grid) features from a chosen layer, [CLS] dropped
    H_v = W · Z_v         LlavaProjector (kind="linear"; LLaVA-1.5: Linear-GELU-Linear, "mlp")
    H_q = E[X_q]          the language model's own token embeddings
    p(X_a | X_v, X_q) = ∏_i p(x_i | H_v, H_q, x_<i)     GPT (minimodels.gpt), decoder-only

One simplification: CLIP's 16×16 grid of patch features is average-pooled 4×4 (`pool=4`) to
N = 16 visual tokens per image (LLaVA keeps all 576 of its ViT-L/14 patches), so that a CPU
trains a step in a fraction of a second. `pool=1` keeps every patch.

The prompt holds one `<image>` placeholder per image; the processor repeats it once per visual
feature, and `merge_image_features` writes H_v into those positions (as Hugging Face
transformers' LlavaForConditionalGeneration does). Only answer tokens carry a loss (labels are
−100 at image and prompt positions).

Training has two stages:
  1. feature alignment: projector only (CLIP and GPT frozen), on image → caption pairs;
  2. visual instruction tuning: projector + GPT, on instruction data generated from the
     symbolic scene (conversation, detailed description, reasoning), as LLaVA generated its
     data with text-only GPT-4 from COCO captions and boxes; plus PaLI-style task prefixes
     ("caption en", "caption it", "answer en", "count") so that one model does many tasks.

    from minimodels import llava
    model = llava.load_pretrained()
    model.generate(images, ["<image> what color is the circle?"], max_new_tokens=8)

Shape letters: B batch, T tokens, N visual features per image, D vision width, C LM width.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import gpt as gpt_module
from minimodels import shapeworld as sw
from minimodels.checks import check_device, check_finite
from minimodels.clip import CLIP, CLIPConfig, prepare_images
from minimodels.data.instructions import (
    DETAIL_PROMPTS,
    conversation,
    instruction_data,
    stage1_data,
)
from minimodels.gpt import GPT, CausalLMOutput, GPTConfig, causal_lm_loss

TOKENIZER = gpt_module.TOKENIZER  # the LM's vocabulary; `<image>` is one of its tokens
IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100  # label of positions that carry no loss (image, prompt, padding)

# ----------------------------------------------------------------------------------------------
# 1. The projector: H_v = W · Z_v
# ----------------------------------------------------------------------------------------------


class LlavaProjector(nn.Module):
    """Maps visual features (…, vision_dim) to the LM's embedding width (…, text_dim).

    kind="linear": H_v = W · Z_v (+ b), the original LLaVA.
    kind="mlp":    H_v = W₂ · GELU(W₁ · Z_v), LLaVA-1.5 (names as in transformers:
                   linear_1, act, linear_2).
    """

    def __init__(self, vision_dim: int, text_dim: int, kind: str = "mlp"):
        super().__init__()
        for name, value in (("vision_dim", vision_dim), ("text_dim", text_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8192:
                raise ValueError(f"{name} must be an int in [1, 8192]; got {value!r}")
        if kind not in ("linear", "mlp"):
            raise ValueError(f"kind must be 'linear' or 'mlp'; got {kind!r}")
        self.kind, self.vision_dim, self.text_dim = kind, vision_dim, text_dim
        self.linear_1 = nn.Linear(vision_dim, text_dim)  # W (or W₁)
        if kind == "mlp":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(text_dim, text_dim)  # W₂

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if not isinstance(image_features, torch.Tensor) or not image_features.is_floating_point():
            raise TypeError("image_features must be a float tensor (…, vision_dim)")
        check_device(image_features, "image_features", self.linear_1.weight.device)
        check_finite(image_features, "image_features")
        if image_features.ndim == 0 or image_features.shape[-1] != self.vision_dim:
            raise ValueError(
                f"image_features must end in vision_dim={self.vision_dim}; got shape "
                f"{tuple(image_features.shape)}"
            )
        h = self.linear_1(image_features)  # H_v = W · Z_v: (B, N, D) -> (B, N, C)
        if self.kind == "mlp":
            h = self.linear_2(self.act(h))  # H_v = W₂ · GELU(W₁ · Z_v)
        return h


# ----------------------------------------------------------------------------------------------
# 2. Splicing: <image> positions get the projected features
# ----------------------------------------------------------------------------------------------


def merge_image_features(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_features: torch.Tensor,
    image_token_id: int,
) -> torch.Tensor:
    """Write image features into the `<image>` positions of a batch of embedded prompts.

    inputs_embeds (B, T, C): the token embeddings; input_ids (B, T); image_features
    (num_images, N, C) or already flat (num_images·N, C). The placeholders are filled in
    reading order (row 0 left to right, then row 1, …): image 0's N features first. This is
    `inputs_embeds.masked_scatter(mask, features)` in transformers' LLaVA. The number of
    placeholders must equal the number of features (ValueError otherwise). Returns a new
    tensor; inputs_embeds is not modified.
    """
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3:
        got = getattr(inputs_embeds, "shape", type(inputs_embeds).__name__)
        raise ValueError(f"inputs_embeds must be a tensor (B, T, C); got {got}")
    if inputs_embeds.numel() == 0 or not inputs_embeds.is_floating_point():
        raise ValueError(
            f"inputs_embeds must be a non-empty float tensor; got {inputs_embeds.dtype}"
        )
    check_device(inputs_embeds, "inputs_embeds", None)
    check_finite(inputs_embeds, "inputs_embeds")
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int):
        raise TypeError(f"image_token_id must be an int token id; got {image_token_id!r}")
    if not isinstance(input_ids, torch.Tensor) or tuple(input_ids.shape) != inputs_embeds.shape[:2]:
        got = getattr(input_ids, "shape", type(input_ids).__name__)
        raise ValueError(f"input_ids must have shape {tuple(inputs_embeds.shape[:2])}; got {got}")
    check_device(input_ids, "input_ids", None)
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids must hold integer token ids; got {input_ids.dtype}")
    if not isinstance(image_features, torch.Tensor) or image_features.ndim not in (2, 3):
        got = getattr(image_features, "shape", type(image_features).__name__)
        raise ValueError(f"image_features must be (num_images, N, C) or (M, C); got {got}")
    check_device(image_features, "image_features", None)
    if not image_features.is_floating_point():
        raise TypeError(f"image_features must be a float tensor; got {image_features.dtype}")
    check_finite(image_features, "image_features")
    C = inputs_embeds.shape[-1]
    if image_features.shape[-1] != C:
        raise ValueError(
            f"image_features must have the width C={C} of inputs_embeds (project them "
            f"first); got shape {tuple(image_features.shape)}"
        )
    flat = image_features.reshape(-1, C)  # (num_images·N, C), image 0 first
    mask = input_ids == image_token_id  # (B, T) True at <image>
    n_tokens, n_features = int(mask.sum()), flat.shape[0]
    if n_tokens != n_features:
        raise ValueError(
            f"image_features and image tokens do not match: {n_tokens} tokens equal to "
            f"image_token_id={image_token_id} in "
            f"input_ids, {n_features} features (num_images × N). Run the prompts through "
            "LlavaProcessor, which expands each <image> to N tokens"
        )
    out = inputs_embeds.clone()
    out[mask] = flat.to(out.dtype)  # the k-th True position (reading order) gets feature k
    return out


# ----------------------------------------------------------------------------------------------
# 3. The processor: tokenise, expand <image>, build labels
# ----------------------------------------------------------------------------------------------


def chat_prompt(message: str) -> str:
    """The chat template (LLaVA-1.5's 'USER: <image>\\n… ASSISTANT:', in lower case)."""
    return f"<bos> user: {message} assistant:"


class LlavaProcessor:
    """Turns prompts and images into model inputs (transformers' LlavaProcessor, small).

    num_image_tokens: N, how many features the vision side gives per image: each `<image>`
    in a prompt becomes N `<image>` tokens. Prompts are padded on the LEFT, so that every
    prompt ends at the last position, where generation continues.
    """

    def __init__(self, tokenizer=TOKENIZER, num_image_tokens: int = 16, image_size: int = 32):
        if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int):
            raise TypeError(f"num_image_tokens must be an int ≥ 1; got {num_image_tokens!r}")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be ≥ 1; got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.image_size = image_size
        self.image_token_id = tokenizer.image_token_id

    def _check(self, texts, images):
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("text must be a string or a non-empty list of strings")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}] must be a str; got {type(t).__name__}")
            words = [w for w in self.tokenizer.tokenize(t) if w not in ("<bos>", "<eos>")]
            if not [w for w in words if w != IMAGE_TOKEN]:
                raise ValueError(f"text[{i}] is empty: write a question or instruction")
            k = words.count(IMAGE_TOKEN)
            if k != 1:
                raise ValueError(
                    f"text[{i}] must contain exactly one {IMAGE_TOKEN} placeholder (one image per "
                    f"prompt); got {k} in {t!r}"
                )
        pixel_values = prepare_images(images, self.image_size)  # checks size and range
        if pixel_values.shape[0] != len(texts):
            raise ValueError(
                f"give one image per prompt: got {pixel_values.shape[0]} images and "
                f"{len(texts)} prompts"
            )
        return list(texts), pixel_values

    def expand(self, ids: list[int]) -> list[int]:
        """Replace each <image> id by num_image_tokens copies of it."""
        out = []
        for i in ids:
            out.extend([i] * self.num_image_tokens if i == self.image_token_id else [i])
        return out

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        T = max(len(r) for r in rows)
        return torch.tensor([[value] * (T - len(r)) + r for r in rows], dtype=torch.long)

    def __call__(self, text, images) -> dict:
        """Full prompt texts (each with one <image>) and their images ->
        {"input_ids" (B, T), "attention_mask" (B, T), "pixel_values" (B, 3, H, W)}."""
        texts, pixel_values = self._check(text, images)
        rows = [self.expand(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        return {
            "input_ids": self._pad(rows, self.tokenizer.pad_token_id),
            "attention_mask": self._pad([[1] * len(r) for r in rows], 0),
            "pixel_values": pixel_values,
        }

    def conversation(self, turns: Sequence[tuple[str, str]], with_image: bool = True):
        """ids and labels of one conversation [(question, answer), …].

        "<bos> user: <image> q₁ assistant: a₁ <eos> user: q₂ assistant: a₂ <eos> …"
        Labels are the ids on the answers (and their <eos>), −100 everywhere else: the model
        learns to answer, not to predict the image or the question.
        """
        ids, labels = [], []
        for k, (question, answer) in enumerate(turns):
            image = f"{IMAGE_TOKEN} " if (k == 0 and with_image) else ""
            prompt = ("<bos> " if k == 0 else "") + f"user: {image}{question} assistant:"
            p = self.expand(self.tokenizer.encode(prompt, add_special_tokens=False))
            a = self.tokenizer.encode(f"{answer} <eos>", add_special_tokens=False)
            ids += p + a
            labels += [IGNORE_INDEX] * len(p) + a
        return ids, labels

    def training_batch(self, conversations, with_image: bool = True) -> dict:
        """Pad a list of conversations into {"input_ids", "attention_mask", "labels"}."""
        pairs = [self.conversation(c, with_image) for c in conversations]
        return {
            "input_ids": self._pad([p[0] for p in pairs], self.tokenizer.pad_token_id),
            "attention_mask": self._pad([[1] * len(p[0]) for p in pairs], 0),
            "labels": self._pad([p[1] for p in pairs], IGNORE_INDEX),
        }


# ----------------------------------------------------------------------------------------------
# 4. The model
# ----------------------------------------------------------------------------------------------


@dataclass
class LlavaConfig:
    vision_config: CLIPConfig = field(default_factory=lambda: CLIPConfig(patch_size=2))
    text_config: GPTConfig = field(default_factory=GPTConfig)
    vision_feature_layer: int = -2  # LLaVA takes the penultimate layer's patch features
    pool: int = 4  # merge pool×pool neighbouring patches into one token (1 = every patch, as LLaVA)
    pool_mode: str = "avg"  # "avg": average them; "unshuffle": concatenate them (pixel unshuffle)
    projector: str = "mlp"  # "linear" (LLaVA) or "mlp" (LLaVA-1.5)
    image_token_id: int = TOKENIZER.image_token_id

    def __post_init__(self):
        # from JSON (checkpoint.load_model) the nested configs arrive as dicts
        if isinstance(self.vision_config, dict):
            self.vision_config = CLIPConfig(**self.vision_config)
        if isinstance(self.text_config, dict):
            self.text_config = GPTConfig(**self.text_config)
        grid = self.vision_config.image_size // self.vision_config.patch_size
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 1:
            raise ValueError(f"pool must be a positive int; got {self.pool!r}")
        if grid % self.pool:
            raise ValueError(f"pool must divide the patch grid ({grid}); got {self.pool}")
        if self.projector not in ("linear", "mlp"):
            raise ValueError(f"projector must be 'linear' or 'mlp'; got {self.projector!r}")
        if self.pool_mode not in ("avg", "unshuffle"):
            raise ValueError(f"pool_mode must be 'avg' or 'unshuffle'; got {self.pool_mode!r}")

    @property
    def num_image_tokens(self) -> int:
        """N: visual features (= <image> tokens) per image."""
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return (grid // self.pool) ** 2

    @property
    def vision_feature_dim(self) -> int:
        """D of Z_v: the tower's width, × pool² when neighbouring patches are concatenated."""
        width = self.vision_config.vision_width
        return width * self.pool**2 if self.pool_mode == "unshuffle" else width


class LlavaForConditionalGeneration(nn.Module):
    """vision_tower (CLIP, frozen) -> multi_modal_projector -> language_model (GPT)."""

    config_class = LlavaConfig

    def __init__(self, config: LlavaConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else LlavaConfig()
        if not isinstance(c, LlavaConfig):
            raise TypeError(f"config must be a LlavaConfig; got {type(c).__name__}")
        self.vision_tower = CLIP(c.vision_config)
        self.vision_tower.requires_grad_(False)  # frozen in both stages
        self.multi_modal_projector = LlavaProjector(
            c.vision_feature_dim, c.text_config.n_embd, c.projector
        )
        self.language_model = GPT(c.text_config)
        self.processor = LlavaProcessor(TOKENIZER, c.num_image_tokens, c.vision_config.image_size)

    @classmethod
    def from_parts(cls, clip: CLIP, lm: GPT, **kwargs) -> LlavaForConditionalGeneration:
        """A LLaVA built around a (pre-trained) CLIP and GPT; the projector starts random."""
        if not isinstance(clip, CLIP) or not isinstance(lm, GPT):
            raise TypeError("from_parts needs a CLIP and a GPT")
        config = LlavaConfig(vision_config=clip.config, text_config=lm.config, **kwargs)
        model = cls(config).to(lm.device)
        model.vision_tower.load_state_dict(clip.state_dict())
        model.language_model.load_state_dict(lm.state_dict())
        return model

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    @torch.no_grad()
    def vision_features(self, pixel_values) -> torch.Tensor:
        """Z_v: frozen CLIP patch features, pooled: (B, 3, H, W) -> (B, N, D)."""
        c = self.config
        z = self.vision_tower.encode_image_features(pixel_values, c.vision_feature_layer)
        if c.pool > 1:  # (B, g², D) -> (B, D, g, g)
            B, n, D = z.shape
            g = int(round(n**0.5))
            z = z.transpose(1, 2).reshape(B, D, g, g)
            if c.pool_mode == "avg":  # the mean of each pool×pool block: (B, (g/pool)², D)
                z = F.avg_pool2d(z, c.pool).flatten(2).transpose(1, 2)
            else:  # the block's pool² features side by side: (B, (g/pool)², pool²·D)
                z = F.pixel_unshuffle(z, c.pool).flatten(2).transpose(1, 2)
        return z

    def get_image_features(self, pixel_values=None, vision_features=None) -> torch.Tensor:
        """H_v = W · Z_v: (B, N, C), ready to splice into the LM's input."""
        if vision_features is None:
            vision_features = self.vision_features(pixel_values)
        return self.multi_modal_projector(vision_features.to(self.device))  # (B, N, C)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, T) with N <image> tokens per image (from LlavaProcessor);
        pixel_values (num_images, 3, H, W), or vision_features (num_images, N, D) already
        computed by the frozen tower (cached during training). No image: a plain LM."""
        vocab = self.config.text_config.vocab_size
        input_ids = gpt_module._check_ids(input_ids, "input_ids", vocab).to(self.device)
        inputs_embeds = self.get_input_embeddings()(input_ids)  # H_q = E[X_q]: (B, T, C)
        if pixel_values is not None or vision_features is not None:
            image_features = self.get_image_features(pixel_values, vision_features)  # (I, N, C)
            inputs_embeds = merge_image_features(
                inputs_embeds, input_ids, image_features, self.config.image_token_id
            )  # (B, T, C): [H_q … H_v … H_q]
        elif (input_ids == self.config.image_token_id).any():
            raise ValueError("input_ids hold <image> tokens but no pixel_values were given")
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                got = getattr(labels, "shape", type(labels).__name__)
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}"
                                 f" (−100 = no loss); got {got}")  # fmt: skip
            out.loss = causal_lm_loss(out.logits, labels.to(self.device).long())
        return out

    @torch.no_grad()
    def generate(
        self,
        images,
        prompts: Sequence[str] | str,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer one prompt per image. A prompt is the user's message with one `<image>`,
        e.g. "<image> what color is the circle?"; it is wrapped in the chat template.
        Greedy by default; do_sample=True samples at `temperature` (repeatable with `seed`).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise TypeError(
                f"prompts must be a string or a non-empty list of strings; got {prompts!r}"
            )
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompts must all be strings")
        if isinstance(prompts, Sequence):
            for i, p in enumerate(prompts):
                if isinstance(p, str) and not p.replace(IMAGE_TOKEN, "").strip():
                    raise ValueError(f"prompts[{i}] is empty: write a question or instruction")
        gpt_module._check_generation_args(max_new_tokens, do_sample, temperature, None, seed)
        texts = [chat_prompt(p) if isinstance(p, str) else p for p in prompts]
        inputs = self.processor(texts, images)
        ids = inputs["input_ids"].to(self.device)
        embeds = merge_image_features(
            self.get_input_embeddings()(ids),
            ids,
            self.get_image_features(inputs["pixel_values"]),
            self.config.image_token_id,
        )  # (B, T, C)
        new = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            seed=seed,
        )  # fmt: skip
        return [TOKENIZER.decode(row) for row in new.cpu()]


def load_pretrained(device=None, name: str = "llava") -> LlavaForConditionalGeneration:
    """The shipped LLaVA after stage 2 (name="llava") or after stage 1 only ("llava_stage1")."""
    from minimodels.checkpoint import load_model, weights_path

    if name not in ("llava", "llava_stage1"):
        raise ValueError(f"name must be 'llava' or 'llava_stage1'; got {name!r}")
    return load_model(LlavaForConditionalGeneration, weights_path(name), device=device)


def load_blind(device=None) -> GPT:
    """The blind baseline: the GPT fine-tuned on the same questions without the image."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(GPT, weights_path("llava_blind"), device=device)


STAGE2_MIX = {"conversation": 0.5, "detailed description": 0.15, "reasoning": 0.15,
              "task prefix": 0.2}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# 6. Training: the two stages, and the blind baseline
# ----------------------------------------------------------------------------------------------


class FeatureBank:
    """Scenes of the `train` split with their frozen CLIP features, computed once: the tower
    is frozen, so Z_v never changes and need not be recomputed at every step."""

    def __init__(self, model: LlavaForConditionalGeneration, n: int, seed: int = 0):
        size = model.config.vision_config.image_size
        self.scenes = sw.sample_scenes("train", n, seed=3_000_000 + seed, image_size=size)
        feats = []
        for s in range(0, n, 500):
            images = torch.from_numpy(sw.render(self.scenes[s : s + 500], size)).permute(0, 3, 1, 2)
            feats.append(model.vision_features(images).cpu())
        self.features = torch.cat(feats)  # (n, N, D)

    def batch(self, model, step: int, batch_size: int, make, seed: int = 0, with_image=True):
        rng = np.random.default_rng([seed, step, 13])
        idx = rng.choice(len(self.scenes), size=batch_size, replace=False)
        convs = [make(self.scenes[i], rng) for i in idx]
        batch = model.processor.training_batch(convs, with_image=with_image)
        if with_image:
            batch["vision_features"] = self.features[torch.as_tensor(idx)]
        return batch


def stage2_maker(scene, rng):
    kinds = list(STAGE2_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=list(STAGE2_MIX.values())))]
    return instruction_data(scene, kind, rng)


def llava_loss(model, batch):
    return model(**batch).loss


def blind_loss(lm, batch):
    return lm(**batch).loss


def count_trainable(model: nn.Module) -> int:
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
    import copy

    import minimodels
    from minimodels.train import fit, seed_everything

    seed_everything(seed)
    clip = minimodels.pretrained("clip", device=device)
    lm = minimodels.pretrained("gpt", device=device)
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
# 7. Evaluation
# ----------------------------------------------------------------------------------------------


def _test_set(seed: int, n: int, image_size: int = 32):
    images, scenes = sw.generate("test", n, seed=seed, image_size=image_size)
    rng = np.random.default_rng([seed, 17])
    qa = []
    for s in scenes:
        i = int(rng.integers(len(s["questions"])))
        qa.append((s["questions"][i], s["answers"][i]))
    return torch.from_numpy(images).permute(0, 3, 1, 2), scenes, qa


@torch.no_grad()
def answer_blind(lm: GPT, questions: Sequence[str], max_new_tokens: int = 4) -> list[str]:
    """The blind LM's answers: the same chat template with no image."""
    texts = [chat_prompt(q) for q in questions]
    rows = [TOKENIZER.encode(t, add_special_tokens=False) for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.tensor([[TOKENIZER.pad_token_id] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    new = lm.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens)[:, T:]
    return [TOKENIZER.decode(r) for r in new.cpu()]


def _batched(fn, items, images=None, size: int = 250):
    out = []
    for s in range(0, len(items), size):
        if images is None:
            out += fn(items[s : s + size])
        else:
            out += fn(images[s : s + size], items[s : s + size])
    return out


def vqa_accuracy(model: LlavaForConditionalGeneration, images, qa) -> float:
    answers = _batched(
        lambda im, q: model.generate(im, [f"{IMAGE_TOKEN} {x}" for x in q], max_new_tokens=4),
        [q for q, _ in qa],
        images,
    )
    return float(np.mean([a == gold for a, (_, gold) in zip(answers, qa)]))


def pairs_in_text(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a description names, e.g. {('red', 'circle')}."""
    words = text.replace(",", " ").split()
    out = set()
    for k in range(len(words) - 1):
        if words[k] in sw.COLORS and words[k + 1] in sw.SHAPES:
            out.add((words[k], words[k + 1]))
    return out


def caption_attr_accuracy(model: LlavaForConditionalGeneration, images, scenes) -> float:
    """Share of detailed descriptions whose colour-shape pairs are exactly the scene's."""
    texts = _batched(
        lambda im, p: model.generate(im, p, max_new_tokens=40),
        [f"{IMAGE_TOKEN} {DETAIL_PROMPTS[0]}"] * len(scenes),
        images,
    )
    return float(
        np.mean(
            [
                pairs_in_text(t) == {(o["color"], o["shape"]) for o in s["objects"]}
                for t, s in zip(texts, scenes)
            ]
        )
    )


@torch.no_grad()
def evaluate_llava(
    model: LlavaForConditionalGeneration,
    stage1: LlavaForConditionalGeneration,
    blind: GPT,
    seed: int = 0,
    n: int = 1000,
) -> dict:
    """vqa_acc, blind_vqa_acc, stage1_only_vqa_acc and caption_attr_acc on fresh test scenes."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    images, scenes, qa = _test_set(seed, n, model.config.vision_config.image_size)
    blind_answers = _batched(lambda q: answer_blind(blind, q), [q for q, _ in qa])
    return {
        "vqa_acc": round(vqa_accuracy(model, images, qa), 4),
        "blind_vqa_acc": round(float(np.mean([a == g for a, (_, g) in zip(blind_answers, qa)])), 4),
        "stage1_only_vqa_acc": round(vqa_accuracy(stage1, images, qa), 4),
        "caption_attr_acc": round(caption_attr_accuracy(model, images, scenes), 4),
        "n": int(n),
    }


def save_companions(stage1: LlavaForConditionalGeneration, blind: GPT, command: str) -> None:
    """Write the stage-1 model and the blind LM to minimodels/weights/llava_{stage1,blind}.*"""
    from minimodels.checkpoint import save_model, weights_path

    note = {"training": {"command": command, "written_with": "llava (same run)"}}
    save_model(stage1, weights_path("llava_stage1"), extra=note)
    save_model(blind, weights_path("llava_blind"), extra=note)
