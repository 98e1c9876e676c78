"""Frozen: a frozen language model reads an image through a trained visual prefix.

Tsimpoukelli et al. (2021), "Multimodal Few-Shot Learning with Frozen Language Models". The
language model keeps every weight it learnt from text. A vision encoder, trained from scratch,
turns an image into a few vectors of the LM's width, and these are put in front of the text as
if they were word embeddings (a "visual prefix", a kind of prefix tuning where the prefix
depends on the image)::

    prefix = reshape(W · CNN(image))            (B, k, C): k "visual words"
    h      = [prefix ; E(w₁) ; … ; E(w_T)]     (B, k+T, C) fed to the frozen LM
    loss   = − Σ_t log p_LM(w_t | prefix, w_<t)   gradients flow through the frozen LM
                                               into the vision encoder only

The language model can be any module with the interface of a Hugging Face causal LM:
``lm(inputs_embeds=..., attention_mask=..., labels=...)`` returning an object with ``.loss``
and ``.logits``, and ``lm.get_input_embeddings()``. `prefix_forward` does the splicing and is
shared with the Q-Former (`minimodels.qformer`), whose output is a visual prefix too.

Few-shot prompts interleave several images with text (``<image> dax. <image> blicket. <image>``):
`Frozen.forward_interleaved` puts each image's k visual words where its placeholders are, so
every token reads the images before it (`interleaved_forward`; used by the few-shot recipe,
minimodels/recipes/frozen.py).

Shape letters: B batch, k prefix tokens, T text tokens, C the LM's width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import (
    check_device,
    check_ids,
    check_images,
    check_instance,
    check_int,
    check_tensor,
)
from minimodels.gpt import IGNORE_INDEX, TOKENIZER


def lm_width(lm: nn.Module) -> int:
    """Width C of a language model's token embeddings (``get_input_embeddings()``)."""
    get = getattr(lm, "get_input_embeddings", None)
    if not callable(get):
        raise TypeError(
            "lm must be a causal language model with get_input_embeddings() (a Hugging Face-like "
            f"interface, e.g. minimodels.gpt.GPT); got {type(lm).__name__}"
        )
    return get().embedding_dim


def config_for(lm: nn.Module, config, config_class):
    """The config of a model built around `lm`: `config` (its lm_dim must be the LM's width C),
    or by default `config_class(lm_dim=C)`. Frozen, Flamingo and BLIP-2 share this."""
    C = lm_width(check_instance(lm, nn.Module, "lm"))
    config = config_class(lm_dim=C) if config is None else config
    if check_instance(config, config_class, "config").lm_dim != C:
        raise ValueError(f"config.lm_dim must equal the LM's width {C}; got {config.lm_dim}")
    return config


def freeze(module: nn.Module) -> nn.Module:
    """Switch off gradients for every parameter of `module` (and return it)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def prefix_forward(lm, prefix_embeds, input_ids, attention_mask=None, labels=None):
    """Run `lm` on ``[prefix_embeds ; embed(input_ids)]``; the prefix is never a target.

    prefix_embeds (B, k, C) float; input_ids (B, T); attention_mask (B, T) 0/1; labels (B, T)
    with -100 where no loss is wanted. Returns the LM's output; its logits are (B, k+T, V):
    the logits of text position t are at index k + t.
    """
    B, k, _ = prefix_embeds.shape
    input_ids = check_ids(input_ids, "input_ids", lm.get_input_embeddings().num_embeddings)
    if len(input_ids) != B:
        raise ValueError(f"input_ids must have one row per image ({B}); got shape "
                         f"{tuple(input_ids.shape)}")  # fmt: skip
    for name, x in (("attention_mask", attention_mask), ("labels", labels)):
        if x is not None and check_instance(x, torch.Tensor, name).shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}; got {tuple(x.shape)}")  # fmt: skip
        if x is not None:
            check_device(x, name, None)
    device = prefix_embeds.device
    input_ids = input_ids.to(device)
    text_embeds = lm.get_input_embeddings()(input_ids)  # E(w): (B, T, C)
    inputs_embeds = torch.cat([prefix_embeds.to(text_embeds.dtype), text_embeds], dim=1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ones = torch.ones(B, k, dtype=attention_mask.dtype, device=device)
    attention_mask = torch.cat([ones, attention_mask.to(device)], dim=1)  # (B, k+T)
    if labels is not None:
        ignore = torch.full((B, k), IGNORE_INDEX, dtype=labels.dtype, device=device)
        labels = torch.cat([ignore, labels.to(device)], dim=1)  # no loss on the prefix
    return lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)


def interleaved_forward(lm, prefix_embeds, input_ids, image_token_id, attention_mask=None,
                        labels=None):  # fmt: skip
    """Run `lm` on a prompt of interleaved images and text: ``<image> dax. <image> blicket.``.

    prefix_embeds (B, M, k, C): the visual prefixes of M images per row; input_ids (B, T) holds
    k placeholder ids (`image_token_id`) per image, M·k per row, filled in reading order
    (image 0's k words first), as transformers' LLaVA does with ``masked_scatter``. Every
    token attends to every image before it. Returns the LM's output, logits (B, T, V).
    """
    B, M, k, C = prefix_embeds.shape
    check_int(image_token_id, "image_token_id", 0)
    input_ids = check_ids(input_ids, "input_ids", lm.get_input_embeddings().num_embeddings)
    slots = input_ids == image_token_id  # (B, T): True at the placeholders
    if len(input_ids) != B or (slots.device.type == "cpu" and (slots.sum(1) != M * k).any()):
        raise ValueError(f"input_ids must have one row per prompt ({B}), each with M·k = {M}·{k} "
                         f"= {M * k} ids equal to image_token_id={image_token_id} (k per image); "
                         f"got shape {tuple(input_ids.shape)}, counts "
                         f"{slots.sum(1).tolist()}")  # fmt: skip
    device = prefix_embeds.device
    embeds = lm.get_input_embeddings()(input_ids.to(device))  # E(w): (B, T, C)
    flat = prefix_embeds.reshape(B * M * k, C).to(embeds.dtype)  # image 0's k words first
    embeds = embeds.masked_scatter(slots.to(device)[..., None], flat)  # [v₁ v₁′ dax . v₂ v₂′ …]
    if labels is not None:
        check_tensor(labels, "labels", 2, "(B, T), −100 = ignore", floating=False)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}; "
                             f"got {tuple(labels.shape)}")  # fmt: skip
        labels = labels.masked_fill(slots.to(labels.device), IGNORE_INDEX)  # never a target
    return lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)


@dataclass
class FrozenConfig:
    image_size: int = 32
    in_channels: int = 3
    channels: tuple[int, int, int] = (32, 64, 64)  # the CNN's widths, each stage halves H, W
    num_prefix_tokens: int = 2  # k: the paper used n = 2 visual words
    lm_dim: int = 64  # C: must equal the LM's embedding width

    def __post_init__(self):
        self.channels = tuple(self.channels)  # a list when read back from JSON


class FrozenVisionEncoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → visual prefix (B, k, C), trained from scratch.

    A small CNN (the paper used an NF-ResNet-50), global average pooling, then one linear map
    to k·C numbers, reshaped into k vectors of the LM's width (the paper's exact recipe).
    """

    def __init__(self, config: FrozenConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else FrozenConfig()
        layers, c_in = [], c.in_channels
        for c_out in c.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.GroupNorm(math.gcd(8, c_out), c_out),
                nn.GELU(),
            ]
            layers += [nn.MaxPool2d(2)]
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, c.num_prefix_tokens * c.lm_dim)  # W: pooled → k·C

    def forward(self, images) -> torch.Tensor:
        """uint8 (B, 3, H, W), or float in [0, 1] -> the visual prefix (B, k, C)."""
        c = self.config
        x = check_images(images, "images", c.image_size, c.in_channels)  # float in [0, 1]
        x = x.to(self.proj.weight.device)  # (B, 3, H, W)
        h = self.cnn(x).mean(dim=(2, 3))  # global average pool: (B, channels[-1])
        return self.proj(h).view(len(x), c.num_prefix_tokens, c.lm_dim)  # (B, k, C)


class Frozen(nn.Module):
    """A frozen causal LM + a trainable `FrozenVisionEncoder` whose output is a visual prefix.

    ``Frozen(lm)`` freezes every weight of `lm`; only ``vision_encoder`` trains.
    ``forward(images, input_ids, attention_mask=None, labels=None)`` returns the LM's output
    (``.loss`` over the text positions whose label is not -100, ``.logits`` (B, k+T, V)).
    """

    def __init__(self, lm: nn.Module, config: FrozenConfig | None = None):
        super().__init__()
        self.config = config = config_for(lm, config, FrozenConfig)
        self.lm = freeze(lm)
        self.vision_encoder = FrozenVisionEncoder(config).to(lm.get_input_embeddings().weight)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # the LM is frozen: no dropout, whatever mode the rest is in
        return self

    def forward(self, images, input_ids, attention_mask=None, labels=None):
        prefix = self.vision_encoder(images)  # (B, k, C): the image as k "visual words"
        return prefix_forward(self.lm, prefix, input_ids, attention_mask, labels)

    def forward_interleaved(self, images, input_ids, attention_mask=None, labels=None,
                            image_token_id: int = TOKENIZER.image_token_id):  # fmt: skip
        """Images (B, M, 3, H, W), M per prompt, and prompts whose ids hold k placeholders
        (`image_token_id`) per image -> the LM's output (logits (B, T, V), no offset).
        Each image's k visual words go where its placeholders are (`interleaved_forward`)."""
        check_tensor(images, "images", 5, "(B, M, 3, H, W)", floating=None)
        B, M = images.shape[:2]
        prefix = self.vision_encoder(images.flatten(0, 1))  # (B·M, k, C)
        prefix = prefix.view(B, M, *prefix.shape[1:])  # (B, M, k, C)
        return interleaved_forward(self.lm, prefix, input_ids, image_token_id, attention_mask,
                                   labels)  # fmt: skip
