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

Shape letters: B batch, k prefix tokens, T text tokens, C the LM's width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

IGNORE_INDEX = -100  # label of positions that are not trained (as in Hugging Face)


def lm_width(lm: nn.Module) -> int:
    """Width C of a language model's token embeddings (``get_input_embeddings()``)."""
    get = getattr(lm, "get_input_embeddings", None)
    if not callable(get):
        raise TypeError(
            "lm must be a causal language model with get_input_embeddings() (a Hugging Face-like "
            f"interface, e.g. minimodels.gpt.GPT); got {type(lm).__name__}"
        )
    return get().embedding_dim


def freeze(module: nn.Module) -> nn.Module:
    """Switch off gradients for every parameter of `module` (and return it)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _check_ids(input_ids, attention_mask, labels, batch_size: int | None = None):
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise ValueError(f"input_ids must be a (B, T) tensor of token ids; got {got}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
        raise TypeError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
    if batch_size is not None and input_ids.shape[0] != batch_size:
        raise ValueError(
            f"input_ids must have one row per image ({batch_size}); got shape "
            f"{tuple(input_ids.shape)}"
        )
    for value, name in ((attention_mask, "attention_mask"), (labels, "labels")):
        if value is not None and (
            not isinstance(value, torch.Tensor) or value.shape != input_ids.shape
        ):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}; got {got}"
            )


def prefix_forward(lm, prefix_embeds, input_ids, attention_mask=None, labels=None):
    """Run `lm` on ``[prefix_embeds ; embed(input_ids)]``; the prefix is never a target.

    prefix_embeds (B, k, C) float; input_ids (B, T); attention_mask (B, T) 0/1; labels (B, T)
    with -100 where no loss is wanted. Returns the LM's output; its logits are (B, k+T, V):
    the logits of text position t are at index k + t.
    """
    C = lm_width(lm)
    if not isinstance(prefix_embeds, torch.Tensor) or prefix_embeds.ndim != 3:
        got = (
            tuple(prefix_embeds.shape)
            if isinstance(prefix_embeds, torch.Tensor)
            else type(prefix_embeds).__name__
        )
        raise ValueError(f"prefix_embeds must be a (B, k, {C}) tensor; got {got}")
    if prefix_embeds.shape[-1] != C:
        raise ValueError(
            f"prefix_embeds must have the LM's width {C} in its last dimension; got shape "
            f"{tuple(prefix_embeds.shape)}"
        )
    B, k, _ = prefix_embeds.shape
    _check_ids(input_ids, attention_mask, labels, batch_size=B)
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


@dataclass
class FrozenConfig:
    image_size: int = 32
    in_channels: int = 3
    channels: tuple[int, int, int] = (32, 64, 64)  # the CNN's widths, each stage halves H, W
    num_prefix_tokens: int = 2  # k: the paper used n = 2 visual words
    lm_dim: int = 64  # C: must equal the LM's embedding width

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        for name in ("image_size", "in_channels", "num_prefix_tokens", "lm_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive ints; got {self.channels}")


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
        from minimodels.clip import prepare_images

        c = self.config
        device = self.proj.weight.device
        x = prepare_images(images, c.image_size, c.in_channels).to(device)  # (B, 3, H, W)
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
        if not isinstance(lm, nn.Module):
            raise TypeError(f"lm must be a torch.nn.Module (a causal LM); got {type(lm).__name__}")
        C = lm_width(lm)
        config = config if config is not None else FrozenConfig(lm_dim=C)
        if not isinstance(config, FrozenConfig):
            raise TypeError(f"config must be a FrozenConfig; got {type(config).__name__}")
        if config.lm_dim != C:
            raise ValueError(
                f"config.lm_dim must equal the LM's embedding width {C}; got {config.lm_dim}"
            )
        self.config = config
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
