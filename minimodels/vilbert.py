"""ViLBERT from scratch: two streams, co-attention, masked multimodal pre-training, transfer.

Lu et al. (2019), "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations for
Vision-and-Language Tasks". A *fusion* encoder: unlike CLIP, which encodes an image and a text
separately and compares two vectors, ViLBERT lets every word look at every image region (and
back) before it decides anything. The price: a forward pass per (image, text) pair.

    words   [CLS] a red circle ... [SEP] ──► text layers ──┐   ┌─► h_CLS ─┐
                                                           ├ co-attention ×K ┤        ⊙ ─► aligned?
    regions [IMG] r₁ r₂ r₃ (+ 5-d spatial) ─► region proj ─┘   └─► h_IMG ─┘

* Regions. ShapeWorld's object boxes stand in for an object detector. A small CNN runs over
  the whole image; each region's feature is the mean of the CNN's feature map inside its box
  (`RegionEncoder`), plus a linear map of its 5-d spatial vector
  (x0/W, y0/H, x1/W, y1/H, box area / image area) (`spatial_encoding`). Region 0 is [IMG], the
  whole image.
* Co-attention (`CoAttentionLayer`): the text stream's queries attend to the visual stream's
  keys and values, and the visual stream's queries to the text's keys and values; then each
  stream runs ordinary self-attention. The weights can be returned for word ↔ region plots.
* Pre-training heads (`ViLBERTOutput`): masked language modelling (15 % of words, predicted
  from both streams), masked region modelling (15 % of regions zeroed; KL divergence from the
  detector's class distribution, see `soft_region_targets`), and alignment prediction from
  h_IMG ⊙ h_CLS (aligned or not, random and hard negatives, see `hard_negative`).
* Transfer: a VQA head, an MLP on the same h_IMG ⊙ h_CLS over `shapeworld.ANSWERS`.

Quick start::

    from minimodels import shapeworld as sw
    from minimodels.vilbert import ViLBERT, regions_from_scenes
    from minimodels.text import Tokenizer
    images, scenes = sw.generate("test", 4, seed=0)
    regions = regions_from_scenes(scenes)            # boxes (B, R, 4), region_mask (B, R), ...
    out = ViLBERT()(Tokenizer()([s["caption"] for s in scenes]), images_tensor, regions["boxes"],
                    region_mask=regions["region_mask"])
    out.itm_logits                                   # (B, 2): [not aligned, aligned]

Shape letters: B batch, L words, R regions ([IMG] + objects), D width, nh heads, K classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import check_device, check_finite, check_int
from minimodels.clip import _check_tokens, prepare_images
from minimodels.data.captions import hard_negative, random_negative
from minimodels.layers import MultiHeadAttention, TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()
REGION_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in sw.ALL_PAIRS)  # 30 classes
NUM_COLORS, NUM_SHAPES = len(sw.COLORS), len(sw.SHAPES)
IGNORE_INDEX = -100  # labels with this value are left out of a loss (as in PyTorch/HF)


@dataclass
class ViLBERTConfig:
    image_size: int = 32
    in_channels: int = 3
    cnn_channels: int = 32  # width of the region CNN's feature map
    vocab_size: int = _TOKENIZER.vocab_size
    context_length: int = 40
    max_regions: int = 10  # [IMG] + up to 9 objects (a full ShapeWorld grid)
    text_width: int = 64
    vision_width: int = 64
    num_heads: int = 4
    text_layers: int = 1  # BERT-style self-attention layers before the co-attention
    co_layers: int = 2  # co-attention layers (each: cross-attention both ways, then self)
    mlp_ratio: float = 2.0
    bi_hidden: int = 64  # width of h_IMG ⊙ h_CLS
    num_region_classes: int = len(REGION_CLASSES)
    num_answers: int = len(sw.ANSWERS)

    def __post_init__(self):
        for name in (
            "image_size", "in_channels", "cnn_channels", "vocab_size", "context_length",
            "max_regions", "text_width", "vision_width", "num_heads", "text_layers",
            "co_layers", "bi_hidden", "num_region_classes", "num_answers",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                if not (name == "text_layers" and value == 0):
                    raise ValueError(f"{name} must be a positive int; got {value!r}")
        for width in ("text_width", "vision_width"):
            if getattr(self, width) % self.num_heads:
                raise ValueError(
                    f"{width} must be divisible by num_heads; got {getattr(self, width)} and "
                    f"{self.num_heads}"
                )
        if self.max_regions < 2:
            raise ValueError(
                f"max_regions must be >= 2 ([IMG] + one object); got {self.max_regions}"
            )


# ----------------------------------------------------------------------------------------------
# Regions: boxes from the scene ("the detector"), the 5-d spatial vector, pooled CNN features
# ----------------------------------------------------------------------------------------------


def region_class(color: str, shape: str) -> int:
    """Index of a colour-shape class in `REGION_CLASSES` (colour-major: 5 shapes per colour)."""
    return sw.ALL_PAIRS.index((color, shape))


def regions_from_scenes(scenes, max_regions: int | None = None) -> dict[str, torch.Tensor]:
    """The "detector output" of ShapeWorld scenes, padded to one tensor.

    Returns a dict with
      boxes (B, R, 4) float pixels [x0, y0, x1, y1]; region 0 is [IMG] = the whole image,
      region_mask (B, R) bool, True for real regions (False for padding),
      region_labels (B, R) long: the colour-shape class of each object, IGNORE_INDEX for [IMG]
      and padding.
    R = 1 + the largest object count (or `max_regions`).
    """
    if isinstance(scenes, dict):
        scenes = [scenes]
    if not isinstance(scenes, (list, tuple)) or len(scenes) == 0:
        raise ValueError("scenes must be a non-empty list of scene dicts")
    counts = []
    for i, s in enumerate(scenes):
        if not isinstance(s, dict) or "objects" not in s:
            raise TypeError(f"scenes[{i}] must be a scene dict with an 'objects' list")
        if len(s["objects"]) == 0:
            raise ValueError(f"scenes[{i}] has no objects: a region list cannot be empty")
        counts.append(len(s["objects"]))
    R = 1 + max(counts) if max_regions is None else check_int(max_regions, "max_regions", 1, 1024)
    if R < 1 + max(counts):
        raise ValueError(f"max_regions={R} is too small for {max(counts)} objects + [IMG]")
    B = len(scenes)
    boxes = torch.zeros(B, R, 4)
    region_mask = torch.zeros(B, R, dtype=torch.bool)
    labels = torch.full((B, R), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(scenes):
        size = s.get("image_size", 32)
        boxes[i, 0] = torch.tensor([0.0, 0.0, size, size])  # [IMG]: the whole image
        region_mask[i, 0] = True
        for j, o in enumerate(s["objects"], start=1):
            boxes[i, j] = torch.tensor(o["bbox"], dtype=torch.float32)
            region_mask[i, j] = True
            labels[i, j] = region_class(o["color"], o["shape"])
    return {"boxes": boxes, "region_mask": region_mask, "region_labels": labels}


def _check_regions(boxes, region_mask, B: int, image_size: int, max_regions: int):
    """Validate boxes (B, R, 4) and region_mask (B, R); returns the bool mask."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a float tensor (B, R, 4); got {type(boxes).__name__}")
    check_device(boxes, "boxes", None)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold pixel coordinates; got dtype {boxes.dtype}")
    check_finite(boxes, "boxes")
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must have shape (B, R, 4) with [x0, y0, x1, y1] in pixels; got "
            f"{tuple(boxes.shape)}"
        )
    if boxes.shape[0] != B:
        raise ValueError(f"boxes must have batch size {B} (as the images); got {boxes.shape[0]}")
    R = boxes.shape[1]
    if R == 0:
        raise ValueError("boxes holds no region (R = 0): at least the [IMG] region is needed")
    if R > max_regions:
        raise ValueError(f"boxes has R={R} regions, more than max_regions={max_regions}")
    if region_mask is None:
        region_mask = torch.ones(B, R, dtype=torch.bool, device=boxes.device)
    if not isinstance(region_mask, torch.Tensor) or region_mask.dtype != torch.bool:
        got = region_mask.dtype if isinstance(region_mask, torch.Tensor) else type(region_mask)
        raise TypeError(f"region_mask must be a bool tensor (B, R), True = real; got {got}")
    if tuple(region_mask.shape) != (B, R):
        raise ValueError(
            f"region_mask must have the shape of boxes[..., 0], {(B, R)}; got "
            f"{tuple(region_mask.shape)}"
        )
    if not region_mask.any(dim=1).all():
        empty = (~region_mask.any(dim=1)).nonzero()[0].item()
        raise ValueError(f"image {empty} has an empty region list (region_mask all False)")
    b = boxes.detach().float()
    if not torch.isfinite(b).all():
        raise ValueError("boxes contain NaN or inf")
    x0, y0, x1, y1 = b.unbind(-1)
    bad = region_mask & (
        (x0 < 0) | (y0 < 0) | (x1 > image_size) | (y1 > image_size) | (x1 <= x0) | (y1 <= y0)
    )
    if bad.any():
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"boxes[{i}, {j}] = {b[i, j].tolist()} is not a box inside the "
            f"{image_size}×{image_size} image (need 0 <= x0 < x1 <= {image_size}, same for y)"
        )
    return region_mask


def spatial_encoding(boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """The 5-d spatial vector of each box: (x0/W, y0/H, x1/W, y1/H, area fraction).

    boxes (..., 4) in pixels -> (..., 5) in [0, 1].
    """
    if not isinstance(boxes, torch.Tensor) or boxes.shape[-1:] != (4,):
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor (..., 4); got {got}")
    check_device(boxes, "boxes", None)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold pixel coordinates; got dtype {boxes.dtype}")
    check_finite(boxes, "boxes")
    image_size = check_int(image_size, "image_size", 1, 4096)
    if boxes.numel() and (boxes.min() < 0 or boxes.max() > image_size):
        raise ValueError(
            f"boxes must lie inside the image, in [0, image_size={image_size}] pixels; got "
            f"values in [{boxes.min().item():.3g}, {boxes.max().item():.3g}]"
        )
    b = boxes.float() / image_size  # normalised corners
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (x1−x0)(y1−y0) / (W·H)
    return torch.cat([b, area[..., None]], dim=-1)  # (..., 5)


def box_masks(boxes: torch.Tensor, image_size: int, grid: int | None = None) -> torch.Tensor:
    """(B, R, 4) pixel boxes -> (B, R, grid, grid) float: 1 at the cells of a grid×grid feature
    map (default: one cell per pixel) whose centre lies inside the box."""
    grid = image_size if grid is None else grid
    cell = image_size / grid  # pixels per cell
    c = (torch.arange(grid, device=boxes.device, dtype=torch.float32) + 0.5) * cell  # centres
    x0, y0, x1, y1 = boxes.float().unbind(-1)  # each (B, R)
    in_x = (c >= x0[..., None]) & (c < x1[..., None])  # (B, R, W)
    in_y = (c >= y0[..., None]) & (c < y1[..., None])  # (B, R, H)
    return (in_y[..., :, None] & in_x[..., None, :]).float()  # (B, R, H, W)


class RegionEncoder(nn.Module):
    """The "detector backbone": a small CNN; a region's feature is its mean inside the box.

    Three 3×3 convolutions, the second with stride 2: a (H/2)×(W/2) feature map whose cells
    each see 9×9 pixels, enough for a whole small shape and the outline of a large one.
    """

    def __init__(self, in_channels: int = 3, channels: int = 32):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, padding=1),  # (B, C/2, H, W)
            nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),  # (B, C, H/2, W/2)
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
        )

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W), boxes (B, R, 4) pixels -> features (B, R, channels)."""
        fmap = self.cnn(images)  # (B, C, h, w) with h = H/2
        m = box_masks(boxes, images.shape[-1], fmap.shape[-1])  # (B, R, h, w)
        summed = torch.einsum("brhw,bchw->brc", m, fmap)  # Σ over pixels in the box
        return summed / m.sum(dim=(-2, -1))[..., None].clamp(min=1.0)  # mean: (B, R, C)


# ----------------------------------------------------------------------------------------------
# Co-attention
# ----------------------------------------------------------------------------------------------


class CoAttentionLayer(nn.Module):
    """ViLBERT's co-attentional transformer layer (Co-TRM), pre-norm::

        t' = t + Attn(Q = LN(t) W_q,  K = LN(v) W_k,  V = LN(v) W_v)    # words look at regions
        v' = v + Attn(Q = LN(v) W_q', K = LN(t) W_k', V = LN(t) W_v')   # regions look at words
        t'' = TransformerBlock(t')   v'' = TransformerBlock(v')         # then self-attention

    Both cross-attentions read the streams *before* this layer's update, so the exchange is
    symmetric. Returns (t'', v'') or, with return_attention, also a dict of weights
    {"text_to_region": (B, nh, L, R), "region_to_text": (B, nh, R, L)}.
    """

    def __init__(self, text_width: int, vision_width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_text = nn.LayerNorm(text_width)
        self.ln_vision = nn.LayerNorm(vision_width)
        self.text_cross = MultiHeadAttention(text_width, num_heads, context_dim=vision_width)
        self.vision_cross = MultiHeadAttention(vision_width, num_heads, context_dim=text_width)
        self.text_block = TransformerBlock(text_width, num_heads, mlp_ratio)
        self.vision_block = TransformerBlock(vision_width, num_heads, mlp_ratio)

    def forward(self, t, v, text_mask, region_mask, return_attention: bool = False):
        tn, vn = self.ln_text(t), self.ln_vision(v)
        dt = self.text_cross(
            tn, vn, key_padding_mask=region_mask, return_attention=return_attention
        )
        dv = self.vision_cross(
            vn, tn, key_padding_mask=text_mask, return_attention=return_attention
        )
        weights = {}
        if return_attention:
            (dt, weights["text_to_region"]), (dv, weights["region_to_text"]) = dt, dv
        t, v = t + dt, v + dv  # keys and values exchanged: each stream reads the other
        t = self.text_block(t, key_padding_mask=text_mask)  # then self-attention in each stream
        v = self.vision_block(v, key_padding_mask=region_mask)
        return (t, v, weights) if return_attention else (t, v)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass
class ViLBERTOutput:
    text_hidden: torch.Tensor  # (B, L, D_t) final word states, h_CLS = text_hidden[:, 0]
    region_hidden: torch.Tensor  # (B, R, D_v) final region states, h_IMG = region_hidden[:, 0]
    pooled: torch.Tensor  # (B, bi_hidden): h_IMG ⊙ h_CLS (after each stream's pooler)
    mlm_logits: torch.Tensor  # (B, L, vocab): masked language modelling
    mrm_logits: torch.Tensor  # (B, R, K): masked region modelling, region classes
    itm_logits: torch.Tensor  # (B, 2): [not aligned, aligned]
    vqa_logits: torch.Tensor  # (B, num_answers)
    attentions: list[dict] | None = None  # per co-attention layer, see CoAttentionLayer

    def itm_score(self) -> torch.Tensor:
        """(B,) log-odds that the text describes the image: logit(aligned) − logit(not)."""
        return self.itm_logits[:, 1] - self.itm_logits[:, 0]


class ViLBERT(nn.Module):
    """Two-stream fusion encoder: text stream, region stream, co-attention between them."""

    config_class = ViLBERTConfig

    def __init__(self, config: ViLBERTConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else ViLBERTConfig()
        if not isinstance(c, ViLBERTConfig):
            raise TypeError(f"config must be a ViLBERTConfig; got {type(c).__name__}")
        self.pad_token_id = _TOKENIZER.pad_token_id

        # Text stream: BERT-style embeddings and self-attention layers.
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.position_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.text_layers = nn.ModuleList(
            TransformerBlock(c.text_width, c.num_heads, c.mlp_ratio) for _ in range(c.text_layers)
        )
        # Visual stream: pooled CNN feature + linear(5-d spatial vector), no position index.
        self.region_encoder = RegionEncoder(c.in_channels, c.cnn_channels)
        self.region_proj = nn.Linear(c.cnn_channels, c.vision_width)
        self.spatial_proj = nn.Linear(5, c.vision_width)
        self.ln_region = nn.LayerNorm(c.vision_width)
        # Co-attention layers.
        self.co_layers = nn.ModuleList(
            CoAttentionLayer(c.text_width, c.vision_width, c.num_heads, c.mlp_ratio)
            for _ in range(c.co_layers)
        )
        self.ln_text_final = nn.LayerNorm(c.text_width)
        self.ln_vision_final = nn.LayerNorm(c.vision_width)
        # Poolers (one per stream, to a common width), then h_IMG ⊙ h_CLS.
        self.text_pooler = nn.Linear(c.text_width, c.bi_hidden)
        self.vision_pooler = nn.Linear(c.vision_width, c.bi_hidden)
        # Heads.
        self.mlm_head = nn.Linear(c.text_width, c.vocab_size)
        self.mrm_head = nn.Linear(c.vision_width, c.num_region_classes)
        self.itm_head = nn.Linear(c.bi_hidden, 2)
        self.vqa_head = nn.Sequential(  # ViLBERT's VQA head: a 2-layer MLP on h_IMG ⊙ h_CLS
            nn.Linear(c.bi_hidden, 2 * c.bi_hidden),
            nn.GELU(),
            nn.Linear(2 * c.bi_hidden, c.num_answers),
        )
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    @property
    def device(self) -> torch.device:
        return self.position_embedding.device

    def embed_regions(self, images, boxes, region_mask=None, masked_regions=None):
        """Region tokens (B, R, D_v) and the checked region mask.

        masked_regions (B, R) bool: True where a region's visual feature is zeroed (masked
        region modelling); its spatial vector is kept, so the model knows *where* to look.
        """
        c = self.config
        x = prepare_images(images, c.image_size, c.in_channels).to(self.device)  # (B, 3, H, W)
        B = x.shape[0]
        region_mask = _check_regions(boxes, region_mask, B, c.image_size, c.max_regions)
        boxes, region_mask = boxes.to(self.device).float(), region_mask.to(self.device)
        feats = self.region_encoder(x, boxes)  # (B, R, C): mean-pooled CNN features
        if masked_regions is not None:
            if not isinstance(masked_regions, torch.Tensor) or masked_regions.dtype != torch.bool:
                raise TypeError("masked_regions must be a bool tensor (B, R), True = masked")
            if masked_regions.shape != region_mask.shape:
                raise ValueError(
                    f"masked_regions must have shape {tuple(region_mask.shape)} (B, R); got "
                    f"{tuple(masked_regions.shape)}"
                )
            feats = feats.masked_fill(masked_regions.to(self.device)[..., None], 0.0)  # zeroed
        v = self.region_proj(feats) + self.spatial_proj(spatial_encoding(boxes, c.image_size))
        return self.ln_region(v), region_mask  # (B, R, D_v)

    def forward(
        self,
        tokens,
        images,
        boxes,
        *,
        attention_mask=None,
        region_mask=None,
        masked_regions=None,
        output_attentions: bool = False,
    ) -> ViLBERTOutput:
        """tokens: input_ids (B, L) or the Tokenizer's dict; images uint8 (B, 3, H, W) or float
        in [0, 1]; boxes (B, R, 4) pixels with [IMG] first; region_mask (B, R) bool."""
        c = self.config
        ids, text_mask = _check_tokens(tokens, attention_mask, c.vocab_size, c.context_length,
                                       self.pad_token_id)  # fmt: skip
        ids, text_mask = ids.to(self.device), text_mask.to(self.device)
        v, region_mask = self.embed_regions(images, boxes, region_mask, masked_regions)
        if v.shape[0] != ids.shape[0]:
            raise ValueError(
                f"tokens and images must have the same batch size; got {ids.shape[0]} and "
                f"{v.shape[0]}"
            )
        L = ids.shape[1]
        t = self.token_embedding(ids) + self.position_embedding[:L]  # (B, L, D_t)
        for layer in self.text_layers:
            t = layer(t, key_padding_mask=text_mask)  # (B, L, D_t)
        attentions = [] if output_attentions else None
        for layer in self.co_layers:
            if output_attentions:
                t, v, w = layer(t, v, text_mask, region_mask, return_attention=True)
                attentions.append(w)
            else:
                t, v = layer(t, v, text_mask, region_mask)
        t, v = self.ln_text_final(t), self.ln_vision_final(v)  # (B, L, D_t), (B, R, D_v)
        h_cls = torch.tanh(self.text_pooler(t[:, 0]))  # (B, bi_hidden)
        h_img = torch.tanh(self.vision_pooler(v[:, 0]))  # (B, bi_hidden)
        pooled = h_img * h_cls  # h_IMG ⊙ h_CLS
        return ViLBERTOutput(
            text_hidden=t,
            region_hidden=v,
            pooled=pooled,
            mlm_logits=self.mlm_head(t),  # (B, L, vocab)
            mrm_logits=self.mrm_head(v),  # (B, R, K)
            itm_logits=self.itm_head(pooled),  # (B, 2)
            vqa_logits=self.vqa_head(pooled),  # (B, num_answers)
            attentions=attentions,
        )


# ----------------------------------------------------------------------------------------------
# Pre-training targets: the soft detector distribution, masking, hard negatives
# ----------------------------------------------------------------------------------------------


def soft_region_targets(
    labels: torch.Tensor, true_mass: float = 0.8, similar_mass: float = 0.15
) -> torch.Tensor:
    """The detector's class distribution for each region, derived from the ground truth.

    A real detector (ViLBERT uses Faster R-CNN) outputs a softmax over classes, not a one-hot:
    it is unsure, and its mistakes are between look-alike classes. We have exact labels, so we
    make that distribution by a structured label smoothing over the 30 colour-shape classes:

        p(true class)                                   = true_mass            (0.8)
        p(each of the 9 classes sharing colour or shape) = similar_mass / 9     (0.15 in all)
        p(each of the 20 other classes)                  = rest / 20            (0.05 in all)

    Why: KL(p_detector ‖ p_model) against a one-hot would be plain cross-entropy and push the
    model to full confidence even when a masked region can't be pinned down from the text
    (a caption without positions, two objects of one colour). The soft target keeps it
    calibrated and, like a real detector, says "a red square is more like a red circle than a
    blue cross". labels (...,) long, IGNORE_INDEX allowed -> (..., 30) rows summing to 1
    (rows of IGNORE_INDEX are all zero).
    """
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
        raise TypeError("labels must be a LongTensor of region classes")
    rest = 1.0 - true_mass - similar_mass
    if not (0 < true_mass <= 1 and 0 <= similar_mass and rest >= -1e-9):
        raise ValueError(
            f"need 0 < true_mass, 0 <= similar_mass, true_mass + similar_mass <= 1; got "
            f"{true_mass}, {similar_mass}"
        )
    valid = labels != IGNORE_INDEX
    if ((labels[valid] < 0) | (labels[valid] >= len(REGION_CLASSES))).any():
        raise ValueError(f"labels must be in [0, {len(REGION_CLASSES)}) or {IGNORE_INDEX}")
    k = torch.arange(len(REGION_CLASSES), device=labels.device)
    y = labels.clamp(min=0)[..., None]  # (..., 1)
    same_color = (k // NUM_SHAPES) == (y // NUM_SHAPES)  # (..., 30)
    same_shape = (k % NUM_SHAPES) == (y % NUM_SHAPES)
    is_true = k == y
    similar = (same_color | same_shape) & ~is_true  # 4 + 5 = 9 look-alike classes
    n_similar = NUM_COLORS - 1 + NUM_SHAPES - 1
    n_other = len(REGION_CLASSES) - 1 - n_similar
    p = torch.full(is_true.shape, max(rest, 0.0) / n_other, device=labels.device)
    p = torch.where(similar, torch.tensor(similar_mass / n_similar), p)
    p = torch.where(is_true, torch.tensor(float(true_mass)), p)
    return p * valid[..., None]


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask,
    generator: torch.Generator,
    p: float = 0.15,
    at_least_one: bool = False,
):
    """BERT masking: each real word (not [CLS]/[SEP]/[PAD]) becomes [MASK] with probability p
    (with at_least_one, one word is forced in a text that drew none).
    Returns (masked ids, labels with IGNORE_INDEX elsewhere)."""
    special = torch.tensor(sorted(_TOKENIZER.special_ids))
    word = attention_mask.bool() & ~torch.isin(input_ids, special)  # (B, L) maskable
    chosen = (torch.rand(input_ids.shape, generator=generator) < p) & word
    # at least one masked word per text: force a random word where none was drawn
    none = ~chosen.any(dim=1)
    if at_least_one and none.any():
        scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~word, -1.0)
        forced = F.one_hot(scores.argmax(dim=1), input_ids.shape[1]).bool() & word
        chosen = chosen | (forced & none[:, None])
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return input_ids.masked_fill(chosen, _TOKENIZER.mask_token_id), labels


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _images(scenes, image_size):
    return torch.from_numpy(sw.render(scenes, image_size)).permute(0, 3, 1, 2)  # uint8


def training_batch(
    step: int,
    batch_size: int = 64,
    seed: int = 0,
    image_size: int = 32,
    p_negative: float = 0.5,
    p_hard: float = 0.5,
    mask_prob: float = 0.15,
    vqa: bool = False,
) -> dict:
    """Fresh `train` scenes for one step of multimodal pre-training (and VQA with vqa=True).

    Each scene gets a caption (random template); with probability p_negative the caption is
    replaced by a negative, hard (`hard_negative`) with probability p_hard, else random.
    Words and regions are masked (mask_prob) in *every* pair, but only aligned pairs keep
    their labels (as in ViLBERT): masking only aligned pairs would let the alignment head
    answer "is there a [MASK]?" instead of looking at the image.
    With vqa=True the batch also holds one question per scene and its answer index.
    """
    stream = 1_000_000 * (seed + 1) + step  # scene seeds apart from evaluation seeds
    scenes = sw.sample_scenes("train", batch_size, seed=stream, image_size=image_size)
    rng = np.random.default_rng([seed, step, 11])
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    captions, aligned = [], []
    for i, s in enumerate(scenes):
        template = int(rng.integers(sw.NUM_TEMPLATES))
        if rng.random() >= p_negative:
            captions.append(sw.describe(s, template=template))
            aligned.append(1)
        elif rng.random() < p_hard:
            captions.append(hard_negative(s, template, rng)[0])
            aligned.append(0)
        else:
            captions.append(random_negative(scenes, i, template, rng))
            aligned.append(0)
    aligned = torch.tensor(aligned)
    tokens = _TOKENIZER(captions, max_length=40)
    ids, mlm_labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], gen, mask_prob)
    mlm_labels = mlm_labels.masked_fill(~aligned[:, None].bool(), IGNORE_INDEX)
    regions = regions_from_scenes(scenes)
    objects = regions["region_mask"].clone()
    objects[:, 0] = False  # [IMG] is never masked
    masked = (torch.rand(objects.shape, generator=gen) < mask_prob) & objects  # (B, R)
    batch = {
        "images": _images(scenes, image_size),
        "input_ids": ids,
        "attention_mask": tokens["attention_mask"],
        "mlm_labels": mlm_labels,
        "boxes": regions["boxes"],
        "region_mask": regions["region_mask"],
        "masked_regions": masked,
        "region_labels": regions["region_labels"].masked_fill(
            ~masked | ~aligned[:, None].bool(), IGNORE_INDEX
        ),  # targets only for masked regions of aligned pairs
        "itm_labels": aligned,
    }
    if vqa:
        qs, answers = [], []
        for s in scenes:
            k = int(rng.integers(len(s["questions"])))
            qs.append(s["questions"][k])
            answers.append(sw.ANSWERS.index(s["answers"][k]))
        q = _TOKENIZER(qs, max_length=40)
        batch["question_ids"], batch["question_mask"] = q["input_ids"], q["attention_mask"]
        batch["answers"] = torch.tensor(answers)
    return batch


def pretraining_losses(model: ViLBERT, batch: dict) -> dict[str, torch.Tensor]:
    """The three pre-training losses (and the VQA loss if the batch has questions)."""
    dev = model.device
    out = model(
        batch["input_ids"], batch["images"], batch["boxes"],
        attention_mask=batch["attention_mask"], region_mask=batch["region_mask"],
        masked_regions=batch["masked_regions"],
    )  # fmt: skip
    losses = {}
    # masked language modelling: cross-entropy on the masked words only
    losses["mlm"] = F.cross_entropy(
        out.mlm_logits.flatten(0, 1),
        batch["mlm_labels"].to(dev).flatten(),
        ignore_index=IGNORE_INDEX,
    )
    # masked region modelling: KL(p_detector ‖ p_model) on the masked regions
    labels = batch["region_labels"].to(dev)
    sel = labels != IGNORE_INDEX
    if sel.any():
        target = soft_region_targets(labels[sel])  # (M, K)
        log_p = out.mrm_logits[sel].log_softmax(dim=-1)  # (M, K)
        losses["mrm"] = F.kl_div(log_p, target, reduction="batchmean")  # Σ p log(p / q)
    else:
        losses["mrm"] = out.mrm_logits.sum() * 0.0
    # alignment prediction: is this caption about this image? (from h_IMG ⊙ h_CLS)
    losses["itm"] = F.cross_entropy(out.itm_logits, batch["itm_labels"].to(dev))
    if "question_ids" in batch:
        q = model(
            batch["question_ids"], batch["images"], batch["boxes"],
            attention_mask=batch["question_mask"], region_mask=batch["region_mask"],
        )  # fmt: skip
        losses["vqa"] = F.cross_entropy(q.vqa_logits, batch["answers"].to(dev))
    return losses


def vilbert_training_loss(model: ViLBERT, batch: dict) -> torch.Tensor:
    return sum(pretraining_losses(model, batch).values())


def train_vilbert(
    steps: int = 2000,
    vqa_steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: ViLBERTConfig | None = None,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
) -> tuple[ViLBERT, list[float]]:
    """Pre-train on ShapeWorld (MLM + MRM + alignment), then fine-tune the VQA head and the
    whole model on questions while the pre-training losses keep running.

    steps: pre-training steps; vqa_steps: fine-tuning steps after them (0 = none).
    Returns the model (eval mode) and the loss of every step.
    """
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    model = ViLBERT(config or ViLBERTConfig()).to(get_device(device))
    history = fit(
        model, vilbert_training_loss,
        lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, progress=progress,
        desc="vilbert pre-training", time_budget=time_budget,
    )  # fmt: skip
    if vqa_steps:
        history += fit(
            model, vilbert_training_loss,
            lambda step: training_batch(steps + step, batch_size, seed, vqa=True),
            steps=vqa_steps, lr=lr / 2, warmup=min(50, vqa_steps // 2), cosine=True,
            progress=progress, desc="vilbert VQA fine-tuning",
        )  # fmt: skip
    model.eval()
    return model, history


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def itm_pairs(
    seed: int = 0,
    n: int = 1000,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 3,
    template: int | None = None,
) -> dict:
    """The evaluation set of alignment: n `test` scenes, each with its true caption, a random
    negative and a hard negative (same template: `template`, or a random one per scene).
    Deterministic in seed."""
    images, scenes = sw.generate(
        "test", n, seed=seed, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects,
    )  # fmt: skip
    rng = np.random.default_rng([seed, 99])
    pos, rand, hard, kinds = [], [], [], []
    for i, s in enumerate(scenes):
        t = int(rng.integers(sw.NUM_TEMPLATES)) if template is None else template
        pos.append(sw.describe(s, template=t))
        rand.append(random_negative(scenes, i, t, rng))
        h, kind = hard_negative(s, t, rng)
        hard.append(h)
        kinds.append(kind)
    return {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2),
        "scenes": scenes,
        "positive": pos,
        "random": rand,
        "hard": hard,
        "hard_kind": kinds,
    }


@torch.no_grad()
def itm_scores(model: ViLBERT, images, scenes, captions, batch_size: int = 250) -> torch.Tensor:
    """(n,) alignment log-odds of each (image, caption) pair."""
    model.eval()
    out = []
    for s in range(0, len(captions), batch_size):
        sl = slice(s, s + batch_size)
        r = regions_from_scenes(scenes[sl], model.config.max_regions)
        o = model(_TOKENIZER(captions[sl], max_length=40), images[sl], r["boxes"],
                  region_mask=r["region_mask"])  # fmt: skip
        out.append(o.itm_score().cpu())
    return torch.cat(out)


@torch.no_grad()
def mlm_accuracy(model: ViLBERT, images, scenes, captions, seed: int = 0) -> float:
    """Mask one colour or shape word of each (true) caption; the share predicted exactly."""
    rng = np.random.default_rng([seed, 5])
    tokens = _TOKENIZER(captions, max_length=40)
    ids = tokens["input_ids"].clone()
    attr = torch.tensor(_TOKENIZER.convert_tokens_to_ids(list(sw.COLORS) + list(sw.SHAPES)))
    targets = []
    for i in range(len(captions)):
        slots = torch.isin(ids[i], attr).nonzero().flatten().tolist()
        j = slots[int(rng.integers(len(slots)))]
        targets.append((i, j, int(ids[i, j])))
        ids[i, j] = _TOKENIZER.mask_token_id
    correct = 0
    for s in range(0, len(captions), 250):
        sl = slice(s, s + 250)
        r = regions_from_scenes(scenes[sl], model.config.max_regions)
        o = model(ids[sl], images[sl], r["boxes"], attention_mask=tokens["attention_mask"][sl],
                  region_mask=r["region_mask"])  # fmt: skip
        for i, j, y in targets[sl]:
            correct += int(o.mlm_logits[i - s, j].argmax().item() == y)
    return correct / len(captions)


@torch.no_grad()
def vqa_accuracy(model: ViLBERT, seed: int = 0, n: int = 1000, image_size: int = 32) -> float:
    """Accuracy over every question of n fresh `test` scenes."""
    images, scenes = sw.generate("test", n, seed=seed + 7, image_size=image_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    idx = [(i, k) for i, s in enumerate(scenes) for k in range(len(s["questions"]))]
    correct = 0
    for s in range(0, len(idx), 500):
        chunk = idx[s : s + 500]
        sc = [scenes[i] for i, _ in chunk]
        r = regions_from_scenes(sc, model.config.max_regions)
        q = _TOKENIZER([scenes[i]["questions"][k] for i, k in chunk], max_length=40)
        o = model(q, images[[i for i, _ in chunk]], r["boxes"], region_mask=r["region_mask"])
        pred = o.vqa_logits.argmax(dim=-1).cpu()
        gold = torch.tensor([sw.ANSWERS.index(scenes[i]["answers"][k]) for i, k in chunk])
        correct += int((pred == gold).sum())
    return correct / len(idx)


@torch.no_grad()
def clip_itm_scores(clip_model, images, captions, batch_size: int = 500) -> torch.Tensor:
    """(n,) cosine similarity of each (image, caption) pair under a CLIP model.

    images: (n, 3, H, W), or the images' normalised CLIP embeddings (n, E) computed once
    with `clip_model.encode_image(images, normalize=True)` (a dual encoder's whole point).
    """
    if isinstance(images, torch.Tensor) and images.ndim == 2:
        image_emb = images
    else:
        image_emb = torch.cat(
            [
                clip_model.encode_image(images[s : s + batch_size], normalize=True)
                for s in range(0, len(images), batch_size)
            ]
        )  # (n, E)
    if len(image_emb) != len(captions):
        raise ValueError(
            f"images and captions must have the same length; got {len(image_emb)} and "
            f"{len(captions)}"
        )
    out = []
    for s in range(0, len(captions), batch_size):
        t_e = clip_model.encode_text(
            _TOKENIZER(captions[s : s + batch_size], max_length=40), normalize=True
        )
        out.append((image_emb[s : s + batch_size].to(t_e.device) * t_e).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def retrieval_timing(model: ViLBERT, clip_model, gallery: int = 1000, seed: int = 0) -> dict:
    """Seconds to rank a gallery of images for one text query, both ways.

    dual encoder (CLIP): embed the gallery once (offline), then per query one text encoding
    and one matrix product; fusion (ViLBERT): one forward pass per (query, image) pair.
    """
    images, scenes = sw.generate("test", gallery, seed=seed, image_size=model.config.image_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    query = scenes[0]["caption"]
    model.eval()
    clip_model.eval()
    t0 = time.perf_counter()
    gallery_emb = torch.cat(
        [
            clip_model.encode_image(images[s : s + 500], normalize=True)
            for s in range(0, gallery, 500)
        ]
    )  # (N, E), computed once for all future queries
    t1 = time.perf_counter()
    q = clip_model.encode_text(_TOKENIZER([query]), normalize=True)  # (1, E)
    top_dual = (gallery_emb @ q.T).squeeze(1).argmax().item()  # one matmul ranks the gallery
    t2 = time.perf_counter()
    scores = itm_scores(model, images, scenes, [query] * gallery)  # a forward per pair
    t3 = time.perf_counter()
    return {
        "gallery": gallery,
        "dual_gallery_embed_s": round(t1 - t0, 4),
        "dual_query_s": round(t2 - t1, 5),
        "fusion_query_s": round(t3 - t2, 4),
        "dual_top1_matches": scenes[top_dual]["caption"] == query,
        "fusion_top1_matches": scenes[int(scores.argmax())]["caption"] == query,
    }


def evaluate_vilbert(
    model: ViLBERT, seed: int = 0, n: int = 1000, clip_model=None, vilt_model=None
) -> dict:
    """The issue's metrics on fresh `test` scenes (deterministic in seed)."""
    model.eval()
    size = model.config.image_size
    data = itm_pairs(seed, n, size)
    images, scenes = data["images"], data["scenes"]
    pos = itm_scores(model, images, scenes, data["positive"])
    out = {}
    for key in ("random", "hard"):
        neg = itm_scores(model, images, scenes, data[key])
        out[f"itm_acc_{key}"] = round((pos > neg).float().mean().item(), 4)
    # binary accuracy: is each of the 2n pairs classified right (threshold 0 on the log-odds)?
    neg = itm_scores(model, images, scenes, data["hard"])
    out["itm_binary_acc_hard"] = round(
        ((pos > 0).float().mean() + (neg < 0).float().mean()).item() / 2, 4
    )
    out["mlm_acc"] = round(mlm_accuracy(model, images, scenes, data["positive"], seed), 4)
    out["vqa_acc"] = round(vqa_accuracy(model, seed, n, size), 4)
    if clip_model is not None:
        emb = torch.cat(
            [clip_model.encode_image(images[s : s + 500], normalize=True) for s in range(0, n, 500)]
        )  # the images are embedded once for both captions
        cpos = clip_itm_scores(clip_model, emb, data["positive"])
        chard = clip_itm_scores(clip_model, emb, data["hard"])
        out["clip_itm_acc_hard"] = round((cpos > chard).float().mean().item(), 4)
    # crowded scenes (5 objects, more than either model saw in training; template 3 keeps the
    # caption within 40 tokens): one vector per image has to hold more, one token per region
    # does not
    crowd = itm_pairs(seed, max(1, n // 2), size, min_objects=5, max_objects=5, template=3)
    p5 = itm_scores(model, crowd["images"], crowd["scenes"], crowd["positive"])
    h5 = itm_scores(model, crowd["images"], crowd["scenes"], crowd["hard"])
    out["itm_acc_hard_5_objects"] = round((p5 > h5).float().mean().item(), 4)
    if clip_model is not None:
        emb = clip_model.encode_image(crowd["images"], normalize=True)
        p5 = clip_itm_scores(clip_model, emb, crowd["positive"])
        h5 = clip_itm_scores(clip_model, emb, crowd["hard"])
        out["clip_itm_acc_hard_5_objects"] = round((p5 > h5).float().mean().item(), 4)
    if vilt_model is not None:
        from minimodels.vilt import itm_scores as vilt_scores

        vpos = vilt_scores(vilt_model, images, data["positive"])
        vhard = vilt_scores(vilt_model, images, data["hard"])
        out["itm_acc_hard_single_stream"] = round((vpos > vhard).float().mean().item(), 4)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    return out


def load_pretrained(device=None) -> ViLBERT:
    """The shipped ViLBERT (minimodels/weights/vilbert.safetensors)."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(ViLBERT, weights_path("vilbert"), device=device)
