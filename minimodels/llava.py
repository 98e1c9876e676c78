"""LLaVA from scratch: a frozen image encoder, a projector, and a language model.

Liu et al. (2023), "Visual Instruction Tuning"; Liu et al. (2024), "Improved Baselines with
Visual Instruction Tuning" (LLaVA-1.5). Three parts, and where they live here::

    Z_v = g(X_v)          vision tower: the shipped CLIP image encoder, frozen; its patch
                          (grid) features from a chosen layer, [CLS] dropped
    H_v = W · Z_v         LlavaProjector (kind="linear"; LLaVA-1.5: Linear-GELU-Linear, "mlp")
    H_q = E[X_q]          the language model's own token embeddings
    p(X_a | X_v, X_q) = ∏_i p(x_i | H_v, H_q, x_<i)     GPT (minimodels.gpt), decoder-only

One simplification: each 4×4 block of CLIP's 16×16 grid of patch features is merged into one
token (`pool=4`), by averaging (`pool_mode="avg"`) or concatenating them ("unshuffle", the
shipped model), so N = 16 visual tokens per image (LLaVA keeps all 576 of its ViT-L/14
patches) and a CPU trains a step in a fraction of a second. `pool=1` keeps every patch.

The prompt holds one `<image>` placeholder per image; the processor repeats it once per visual
feature, and `merge_image_features` writes H_v into those positions (as Hugging Face
transformers' LlavaForConditionalGeneration does). Only answer tokens carry a loss (labels are
−100 at image and prompt positions).

Training has two stages (minimodels/recipes/llava.py):
  1. feature alignment: projector only (CLIP and GPT frozen), on image → caption pairs;
  2. visual instruction tuning: projector + GPT, on instruction data generated from the
     symbolic scene (conversation, detailed description, reasoning), as LLaVA generated its
     data with text-only GPT-4 from COCO captions and boxes; plus PaLI-style task prefixes
     ("caption en", "caption it", "answer en", "count") so that one model does many tasks.

    import minimodels
    model = minimodels.pretrained("llava")
    model.generate(images, ["<image> what color is the circle?"], max_new_tokens=8)

Shape letters: B batch, T tokens, N visual features per image, D vision width, C LM width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import (
    check_finite,
    check_ids,
    check_images,
    check_instance,
    check_int,
    check_prompts,
    check_str,
    check_tensor,
)
from minimodels.clip import CLIP, CLIPConfig
from minimodels.gpt import GPT, IGNORE_INDEX, TOKENIZER, CausalLMOutput, GPTConfig

IMAGE_TOKEN = "<image>"  # one of the LM's words (TOKENIZER.image_token_id)

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
        self.kind = check_str(kind, "kind", ("linear", "mlp"))
        self.vision_dim, self.text_dim = vision_dim, text_dim
        self.linear_1 = nn.Linear(vision_dim, text_dim)  # W (or W₁)
        if kind == "mlp":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(text_dim, text_dim)  # W₂

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
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
    placeholders must equal the number of features (checked on CPU ids). Returns a new
    tensor on inputs_embeds' device; inputs_embeds is not modified.
    """
    device = getattr(inputs_embeds, "device", None)  # where the merge runs (meta too)
    check_tensor(inputs_embeds, "inputs_embeds", 3, "(B, T, C)", floating=True,
                 model_device=device)  # fmt: skip
    check_tensor(input_ids, "input_ids", 2, "(B, T)", floating=False, model_device=device)
    check_tensor(image_features, "image_features", (2, 3), "(num_images, N, C)", floating=True,
                 model_device=device)  # fmt: skip
    check_finite(inputs_embeds, "inputs_embeds")
    check_finite(image_features, "image_features")
    check_int(image_token_id, "image_token_id", 0)
    B, T, C = inputs_embeds.shape
    if input_ids.shape != (B, T) or image_features.shape[-1] != C:
        raise ValueError(
            f"input_ids must be {(B, T)} and image_features end in the width C={C} of "
            f"inputs_embeds (project them first); got {tuple(input_ids.shape)} and "
            f"{tuple(image_features.shape)}"
        )
    flat = image_features.reshape(-1, C)  # (num_images·N, C), image 0 first
    mask = input_ids == image_token_id  # (B, T) True at <image>
    if mask.device.type == "cpu" and int(mask.sum()) != len(flat):
        raise ValueError(
            f"image_features and image tokens do not match: {int(mask.sum())} tokens equal to "
            f"image_token_id={image_token_id} in input_ids, {len(flat)} features (num_images "
            "× N). Run the prompts through LlavaProcessor, which expands each <image> to N tokens"
        )
    # the k-th True position (in reading order) gets feature k: [H_q … H_v … H_q]
    return inputs_embeds.masked_scatter(
        mask.to(device)[..., None], flat.to(device, inputs_embeds.dtype)
    )


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
        self.tokenizer = tokenizer
        self.num_image_tokens = check_int(num_image_tokens, "num_image_tokens", 1)
        self.image_size = image_size
        self.image_token_id = tokenizer.image_token_id

    def expand(self, ids: list[int]) -> list[int]:
        """Replace each <image> id by num_image_tokens copies of it."""
        out = []
        for i in ids:
            out.extend([i] * self.num_image_tokens if i == self.image_token_id else [i])
        return out

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        T = max(len(r) for r in rows)
        padded = [[value] * (T - len(r)) + r for r in rows]
        return torch.tensor(padded, dtype=torch.long, device="cpu")  # host side, as the tokenizer

    def __call__(self, text, images) -> dict:
        """Full prompt texts (each with one <image>) and their images ->
        {"input_ids" (B, T), "attention_mask" (B, T), "pixel_values" (B, 3, H, W)}."""
        texts = check_prompts(text, "text")
        for i, t in enumerate(texts):
            if self.tokenizer.tokenize(t).count(IMAGE_TOKEN) != 1:
                raise ValueError(f"text[{i}] must contain exactly one {IMAGE_TOKEN} placeholder "
                                 f"(one image per prompt); got {t!r}")  # fmt: skip
        pixel_values = check_images(images, "images", self.image_size)  # (B, 3, H, W) in [0, 1]
        if len(pixel_values) != len(texts):
            raise ValueError(f"give one image per prompt: got {len(pixel_values)} images and "
                             f"{len(texts)} prompts")  # fmt: skip
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
        c = LlavaConfig() if config is None else check_instance(config, LlavaConfig, "config")
        self.config = c
        grid = c.vision_config.image_size // c.vision_config.patch_size
        if grid % c.pool:
            raise ValueError(f"pool={c.pool} must divide the grid of {grid}×{grid} patches")
        check_str(c.pool_mode, "pool_mode", ("avg", "unshuffle"))
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
        check_instance(clip, CLIP, "clip")
        check_instance(lm, GPT, "lm")
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
        ids = check_ids(input_ids, "input_ids", self.config.text_config.vocab_size)  # (B, T)
        no_image = pixel_values is None and vision_features is None
        if no_image and ids.device.type == "cpu" and (ids == self.config.image_token_id).any():
            raise ValueError("input_ids hold <image> tokens but no pixel_values were given")
        if pixel_values is not None:  # uint8, or float in [0, 1]
            pixel_values = check_images(pixel_values, "pixel_values", self.processor.image_size)
        ids = ids.to(self.device)
        inputs_embeds = self.get_input_embeddings()(ids)  # H_q = E[X_q]: (B, T, C)
        if not no_image:
            image_features = self.get_image_features(pixel_values, vision_features)  # (I, N, C)
            inputs_embeds = merge_image_features(
                inputs_embeds, ids, image_features, self.config.image_token_id
            )  # (B, T, C): [H_q … H_v … H_q]
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels
        )  # loss on the answer tokens only (labels −100 elsewhere)

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
        prompts = check_prompts(prompts, "prompts")
        for i, p in enumerate(prompts):
            if not p.replace(IMAGE_TOKEN, "").strip():
                raise ValueError(f"prompts[{i}] is empty: write a question or instruction")
        texts = [chat_prompt(p) for p in prompts]
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
