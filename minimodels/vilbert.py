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
  detector's class distribution), and alignment prediction from h_IMG ⊙ h_CLS (aligned or
  not, random and hard negatives).
* Transfer: a VQA head, an MLP on the same h_IMG ⊙ h_CLS over `shapeworld.ANSWERS`.

The pre-training batches, masking, losses, training, evaluation and the shipped weights are in
``minimodels/recipes/vilbert.py``.

Quick start::

    from minimodels import shapeworld as sw
    from minimodels.data.images import to_tensor
    from minimodels.vilbert import ViLBERT, regions_from_scenes
    from minimodels.text import Tokenizer
    images, scenes = sw.generate("test", 4, seed=0)   # uint8 (4, 32, 32, 3), scene dicts
    regions = regions_from_scenes(scenes)            # boxes (B, R, 4), region_mask (B, R), ...
    out = ViLBERT()(Tokenizer()([s["caption"] for s in scenes]), to_tensor(images),
                    regions["boxes"], region_mask=regions["region_mask"])
    out.itm_logits                                   # (B, 2): [not aligned, aligned]

Shape letters: B batch, L words, R regions ([IMG] + objects), D width, nh heads, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_finite, check_images, check_instance, check_int, check_tensor
from minimodels.clip import text_inputs
from minimodels.data.world import ALL_PAIRS, ANSWERS
from minimodels.layers import MultiHeadAttention, TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()
REGION_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in ALL_PAIRS)  # 30 classes
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
    num_answers: int = len(ANSWERS)


# ----------------------------------------------------------------------------------------------
# Regions: boxes from the scene ("the detector"), the 5-d spatial vector, pooled CNN features
# ----------------------------------------------------------------------------------------------


def region_class(color: str, shape: str) -> int:
    """Index of a colour-shape class in `REGION_CLASSES` (colour-major: 5 shapes per colour)."""
    return ALL_PAIRS.index((color, shape))


def regions_from_scenes(scenes, max_regions: int | None = None) -> dict[str, torch.Tensor]:
    """The "detector output" of ShapeWorld scenes, padded to one tensor (ViLBERT's processor).

    Returns a dict with
      boxes (B, R, 4) float pixels [x0, y0, x1, y1]; region 0 is [IMG] = the whole image,
      region_mask (B, R) bool, True for real regions (False for padding),
      region_labels (B, R) long: the colour-shape class of each object, IGNORE_INDEX for [IMG]
      and padding.
    R = 1 + the largest object count (or `max_regions`).
    """
    scenes = [scenes] if isinstance(scenes, dict) else scenes
    if not isinstance(scenes, (list, tuple)) or not scenes:
        raise ValueError(f"scenes must be a non-empty list of scene dicts; got {scenes!r:.60}")
    if not all(isinstance(s, dict) and s.get("objects") for s in scenes):
        raise ValueError("every scene must be a scene dict with a non-empty 'objects' list")
    most = max(len(s["objects"]) for s in scenes)
    R = 1 + most if max_regions is None else check_int(max_regions, "max_regions", 1 + most, 1024)
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


def _check_regions(boxes, region_mask, masked_regions, B: int) -> torch.Tensor:
    """boxes (B, R, 4); region_mask and masked_regions (B, R) bool. Returns the region mask
    (all True when None). Shapes and dtypes; values (NaN, inf) only of boxes on the CPU."""
    check_tensor(boxes, "boxes", 3, "(B, R, 4) pixels [x0, y0, x1, y1]")
    check_finite(boxes, "boxes")  # read on the CPU only, where regions_from_scenes makes them
    if boxes.shape[0] != B or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be (B={B}, R, 4) pixels [x0, y0, x1, y1], B as the images; "
                         f"got shape {tuple(boxes.shape)}")  # fmt: skip
    R = boxes.shape[1]
    region_mask = torch.ones(B, R, dtype=torch.bool) if region_mask is None else region_mask
    for name, mask in (("region_mask", region_mask), ("masked_regions", masked_regions)):
        if mask is not None and not (
            isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == (B, R)
        ):
            got = f"{mask.dtype} {tuple(mask.shape)}" if hasattr(mask, "shape") else repr(mask)
            raise ValueError(f"{name} must be a bool tensor of the shape of boxes[..., 0], "
                             f"{(B, R)}; got {got:.60}")  # fmt: skip
    return region_mask


def spatial_encoding(boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """The 5-d spatial vector of each box: (x0/W, y0/H, x1/W, y1/H, area fraction).

    boxes (..., 4) in pixels -> (..., 5) in [0, 1].
    """
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
        c = ViLBERTConfig() if config is None else check_instance(config, ViLBERTConfig, "config")
        for width in ("text_width", "vision_width"):  # structural: attention splits the width
            if getattr(c, width) % c.num_heads:
                raise ValueError(
                    f"{width}={getattr(c, width)} must be divisible by num_heads={c.num_heads}"
                )
        self.config = c
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
        x = check_images(images, "images", c.image_size, c.in_channels).to(self.device)
        region_mask = _check_regions(boxes, region_mask, masked_regions, x.shape[0])
        boxes, region_mask = boxes.to(self.device).float(), region_mask.to(self.device)
        feats = self.region_encoder(x, boxes)  # (B, R, C): mean-pooled CNN features
        if masked_regions is not None:
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
        ids, text_mask = text_inputs(tokens, attention_mask, c.vocab_size, c.context_length,
                                     self.pad_token_id)  # fmt: skip
        ids, text_mask = ids.to(self.device), text_mask.to(self.device)  # (B, L) each
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
