"""CLIP from scratch: two encoders, one shared space, a contrastive loss.

Radford et al. (2021), "Learning Transferable Visual Models From Natural Language Supervision".
An image encoder (a small ViT) and a text encoder (a small transformer) each map their input to
one vector; linear projections W_i and W_t put both into a shared d-dimensional space, where a
matching image and caption should have a high cosine similarity and mismatched ones a low one.
The slide's pseudocode, and where it lives in this file::

    I_f = image_encoder(I)                  # CLIP.encode_image  (before the projection)
    T_f = text_encoder(T)                   # CLIP.encode_text
    I_e = l2_normalize(np.dot(I_f, W_i))    # encode_image(images, normalize=True)
    T_e = l2_normalize(np.dot(T_f, W_t))    # encode_text(tokens, normalize=True)
    logits = np.dot(I_e, T_e.T) * np.exp(t) # CLIP.forward / clip_loss
    labels = np.arange(n)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    loss = (loss_i + loss_t) / 2            # clip_loss

The public names follow open_clip / OpenAI CLIP: ``encode_image``, ``encode_text``,
``logit_scale`` and ``forward(images, tokens) -> (logits_per_image, logits_per_text)``.

    from minimodels.clip import CLIP, CLIPConfig, clip_loss
    from minimodels.text import Tokenizer
    model, tok = CLIP(CLIPConfig()), Tokenizer()
    logits_per_image, logits_per_text = model(images, tok(["a red circle", ...]))

Shape letters: B batch, N patches (grid_size²), L tokens, D encoder width, E shared width.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import check_device, check_finite, check_instance, check_int
from minimodels.data.captions import CLASSNAMES, mixed_captions
from minimodels.layers import PatchEmbedding, TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # t₀ = log(1/τ₀), τ₀ = 0.07 as in CLIP
LOGIT_SCALE_MAX = math.log(100.0)  # exp(t) is clamped to ≤ 100 as in CLIP


@dataclass
class CLIPConfig:
    # image encoder: a ViT
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    # text encoder: a transformer over the Tokenizer's ids, pooled at [CLS]
    vocab_size: int = _TOKENIZER.vocab_size
    context_length: int = 40  # the longest ShapeWorld caption has 30 tokens
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # shared space
    embed_dim: int = 64  # E: width of the shared image-text space
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self):
        for name in (
            "image_size", "patch_size", "in_channels", "vision_width", "vision_layers",
            "vision_heads", "vocab_size", "context_length", "text_width", "text_layers",
            "text_heads", "embed_dim",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size; got image_size={self.image_size}, "
                f"patch_size={self.patch_size}"
            )
        for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"{width} must be divisible by {heads}; got {getattr(self, width)} and "
                    f"{getattr(self, heads)}"
                )


# ----------------------------------------------------------------------------------------------
# Input checks: each error names the parameter, what was expected and what came
# ----------------------------------------------------------------------------------------------


def prepare_images(images, image_size: int, in_channels: int = 3) -> torch.Tensor:
    """uint8 (B, C, H, W) in 0..255 or float (B, C, H, W) in [0, 1] -> float32 in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a torch.Tensor (B, {in_channels}, {image_size}, {image_size}); "
            f"got {type(images).__name__}"
        )
    check_device(images, "images", None)
    if images.ndim != 4:
        hint = " (a single image? use images[None])" if images.ndim == 3 else ""
        raise ValueError(
            f"images must have 4 dimensions (B, {in_channels}, {image_size}, {image_size}); "
            f"got shape {tuple(images.shape)}{hint}"
        )
    if images.shape[1] != in_channels:
        hint = (
            " -- channels-last? use images.permute(0, 3, 1, 2)"
            if images.shape[-1] == in_channels
            else ""
        )
        raise ValueError(
            f"images must have {in_channels} channels in dim 1 (B, C, H, W); got shape "
            f"{tuple(images.shape)}{hint}"
        )
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"images must be {image_size}×{image_size} (config.image_size); got shape "
            f"{tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (B = 0)")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or float in [0, 1]; got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float images must lie in [0, 1]; got values in [{lo:.3f}, {hi:.3f}] "
            "(uint8 images can be passed as they are; [-1, 1] images need (x + 1) / 2)"
        )
    return images.float()


def _check_tokens(tokens, attention_mask, vocab_size: int, context_length: int, pad_id: int):
    """input_ids (B, L) LongTensor or the tokenizer's dict -> (ids, bool keep-mask (B, L))."""
    if isinstance(tokens, dict):
        if "input_ids" not in tokens:
            raise ValueError(f"tokens dict must hold 'input_ids'; got keys {sorted(tokens)}")
        if attention_mask is None:
            attention_mask = tokens.get("attention_mask")
        tokens = tokens["input_ids"]
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(
            "tokens must be a LongTensor of input_ids (B, L) or the dict returned by "
            f"Tokenizer(texts); got {type(tokens).__name__}"
        )
    check_device(tokens, "tokens", None)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, L); got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"tokens must be integer ids (torch.long); got dtype {tokens.dtype}")
    B, L = tokens.shape
    if B == 0 or L == 0:
        raise ValueError(f"tokens is empty; got shape {tuple(tokens.shape)}")
    if L > context_length:
        raise ValueError(
            f"tokens has L={L} tokens, more than context_length={context_length}; tokenize "
            f"with max_length={context_length}"
        )
    lo, hi = tokens.min().item(), tokens.max().item()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, vocab_size={vocab_size}); got ids in [{lo}, {hi}] "
            "(a tokenizer with another vocabulary?)"
        )
    if attention_mask is None:
        keep = tokens != pad_id  # (B, L) True = real token
    else:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, L):
            got = (
                tuple(attention_mask.shape)
                if isinstance(attention_mask, torch.Tensor)
                else type(attention_mask).__name__
            )
            raise ValueError(f"attention_mask must have the shape of tokens {(B, L)}; got {got}")
        keep = attention_mask.bool()
    return tokens.long(), keep.to(tokens.device)


def _check_emb(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [n, d]; got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions [n, d]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor; got dtype {x.dtype}")
    check_device(x, name, None)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty; got shape {tuple(x.shape)}")
    check_finite(x, name)


def _check_normalized(x, name: str, atol: float = 1e-3) -> None:
    norms = x.detach().float().norm(dim=-1)
    if not torch.isfinite(norms).all() or (norms - 1).abs().max().item() > atol:
        raise ValueError(
            f"{name} must be L2-normalised (every row of norm 1); got norms in "
            f"[{norms.min().item():.4f}, {norms.max().item():.4f}]. Use encode_*(..., "
            "normalize=True) or F.normalize(x, dim=-1)"
        )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class CLIP(nn.Module):
    """A dual encoder: ViT for images, transformer for text, projections into one space."""

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else CLIPConfig()
        if not isinstance(c, CLIPConfig):
            raise TypeError(f"config must be a CLIPConfig; got {type(c).__name__}")
        self.pad_token_id = _TOKENIZER.pad_token_id

        # Image encoder: z₀ = [x_cls; x_p E] + E_pos, then L pre-norm blocks, pooled at [CLS].
        self.patch_embed = PatchEmbedding(
            c.image_size, c.patch_size, c.in_channels, c.vision_width, cls_token=True
        )
        self.ln_pre = nn.LayerNorm(c.vision_width)
        self.vision_blocks = nn.ModuleList(
            TransformerBlock(c.vision_width, c.vision_heads, c.mlp_ratio, c.dropout)
            for _ in range(c.vision_layers)
        )
        self.ln_post = nn.LayerNorm(c.vision_width)
        self.visual_proj = nn.Linear(c.vision_width, c.embed_dim, bias=False)  # W_i

        # Text encoder: token + position embeddings, bidirectional blocks with a padding mask,
        # pooled at [CLS] (position 0, where the Tokenizer puts it).
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.text_blocks = nn.ModuleList(
            TransformerBlock(c.text_width, c.text_heads, c.mlp_ratio, c.dropout)
            for _ in range(c.text_layers)
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_proj = nn.Linear(c.text_width, c.embed_dim, bias=False)  # W_t

        # The learned temperature, stored as a log: t, with τ = 1/exp(t).
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.visual_proj.weight, std=c.vision_width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=c.text_width**-0.5)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def clamp_logit_scale_(self) -> None:
        """Keep exp(t) in [1, 100] (CLIP clips t after every optimizer step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def scale(self) -> torch.Tensor:
        """exp(t), the inverse temperature 1/τ, clamped to at most 100."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    # ---- image tower -------------------------------------------------------------------------

    def _vision_tokens(self, images, upto: int | None = None) -> torch.Tensor:
        """Hidden states (B, 1+N, D) after `upto` blocks (default: all of them)."""
        c = self.config
        x = prepare_images(images, c.image_size, c.in_channels).to(self.device)  # (B, 3, H, W)
        x = self.ln_pre(self.patch_embed(x))  # (B, 1+N, D): [CLS] then N patches
        for block in self.vision_blocks[:upto]:
            x = block(x)  # (B, 1+N, D)
        return x

    def encode_image(self, images, normalize: bool = False) -> torch.Tensor:
        """images uint8 (B, 3, H, W) or float in [0, 1] -> I_e (B, E), unit rows if normalize."""
        x = self._vision_tokens(images)  # (B, 1+N, D)
        features = self.visual_proj(self.ln_post(x[:, 0]))  # I_f W_i: (B, E), from [CLS]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_features(self, images, layer: int = -1) -> torch.Tensor:
        """Patch features of the vision tower (B, N, D), without [CLS] (what LLaVA projects).

        `layer` picks the block whose output is returned: -1 the last, -2 the one before (LLaVA
        uses the penultimate layer), 0 the first. No final LayerNorm, no projection. N patches
        are in row-major order: reshape to (B, grid, grid, D) with grid = image_size//patch.
        """
        n = self.config.vision_layers
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layer must be an int in [{-n}, {n - 1}]; got {layer!r}")
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [{-n}, {n - 1}] (vision_layers={n}); got {layer}")
        upto = int(layer) % n + 1  # how many blocks to run
        return self._vision_tokens(images, upto)[:, 1:]  # (B, N, D)

    # ---- text tower --------------------------------------------------------------------------

    def encode_text_features(self, tokens, attention_mask=None) -> torch.Tensor:
        """Per-token features of the text tower (B, L, D) after the final LayerNorm, without
        pooling or projection: what a text-to-image model cross-attends to (as Stable
        Diffusion uses CLIPTextModel's last_hidden_state). Rows at padding are not meaningful;
        mask them with the tokens' attention_mask.
        """
        c = self.config
        ids, keep = _check_tokens(tokens, attention_mask, c.vocab_size, c.context_length,
                                  self.pad_token_id)  # fmt: skip
        ids, keep = ids.to(self.device), keep.to(self.device)
        L = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # (B, L, D)
        for block in self.text_blocks:
            x = block(x, key_padding_mask=keep)  # padding keys are ignored
        return self.ln_final(x)  # (B, L, D)

    def encode_text(self, tokens, normalize: bool = False, attention_mask=None) -> torch.Tensor:
        """tokens: input_ids (B, L) or the Tokenizer's dict -> T_e (B, E), pooled at [CLS]."""
        x = self.encode_text_features(tokens, attention_mask)  # (B, L, D), after ln_final
        features = self.text_proj(x[:, 0])  # T_f W_t: (B, E), from [CLS]
        return F.normalize(features, dim=-1) if normalize else features

    # ---- both --------------------------------------------------------------------------------

    def forward(self, images, tokens):
        """-> (logits_per_image (B_i, B_t), logits_per_text (B_t, B_i)), as in open_clip."""
        image_emb = self.encode_image(images, normalize=True)  # I_e: (B_i, E)
        text_emb = self.encode_text(tokens, normalize=True)  # T_e: (B_t, E)
        logits_per_image = self.scale() * image_emb @ text_emb.T  # np.dot(I_e, T_e.T) * exp(t)
        return logits_per_image, logits_per_image.T


# ----------------------------------------------------------------------------------------------
# The contrastive loss
# ----------------------------------------------------------------------------------------------


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP on a batch of n matching pairs.

    image_emb, text_emb: L2-normalised [n, d]; row i of each comes from the same pair.
    logit_scale: the already-exponentiated scale exp(t) = 1/τ (a positive number or 0-d tensor).
    """
    _check_emb(image_emb, "image_emb")
    _check_emb(text_emb, "text_emb")
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"image_emb and text_emb must have the same batch size n; got "
            f"{image_emb.shape[0]} and {text_emb.shape[0]}"
        )
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must have the same width d; got {image_emb.shape[1]} and "
            f"{text_emb.shape[1]}"
        )
    _check_normalized(image_emb, "image_emb")
    _check_normalized(text_emb, "text_emb")
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar; got shape {tuple(logit_scale.shape)}")
        value = logit_scale.detach().float().item()
    elif isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool):
        value = float(logit_scale)
    else:
        raise TypeError(f"logit_scale must be a positive number; got {logit_scale!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"logit_scale must be positive and finite (exp(t), already exponentiated); got {value}"
        )
    n = image_emb.shape[0]
    logits = logit_scale * image_emb @ text_emb.T  # np.dot(I_e, T_e.T) * np.exp(t): (n, n)
    labels = torch.arange(n, device=logits.device)  # the i-th image belongs to the i-th text
    loss_i = F.cross_entropy(logits, labels)  # image -> text: softmax over each row
    loss_t = F.cross_entropy(logits.T, labels)  # text -> image: softmax over each column
    return (loss_i + loss_t) / 2  # loss = (loss_i + loss_t) / 2


# ----------------------------------------------------------------------------------------------
# Zero-shot classification and retrieval
# ----------------------------------------------------------------------------------------------

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",  # "photo" is not a ShapeWorld word: it becomes [UNK]
    "a {}",
    "an image of a {}",
    "there is a {}",
    "an image of a small {}",
    "an image of a large {}",
)


def _check_strings(values, name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings; got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty: expected at least one string")
    if any(not isinstance(v, str) for v in values):
        raise TypeError(f"{name} must hold only strings")
    return list(values)


@torch.no_grad()
def zero_shot_classifier(model: CLIP, tokenizer, classnames, templates=TEMPLATES) -> torch.Tensor:
    """One unit vector per class, (E, C): the normalised mean of the normalised embeddings of
    the class's prompts (prompt ensembling), as in CLIP's ImageNet notebook.

    templates: format strings with one "{}" for the class name, e.g. "a photo of a {}".
    """
    check_instance(model, CLIP, "model")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a Tokenizer (callable); got {tokenizer!r}")
    classnames = _check_strings(classnames, "classnames")
    templates = _check_strings(templates, "templates")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"each template must contain '{{}}' once; got {t!r}")
    weights = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates], padding=True)
        emb = model.encode_text(tokens, normalize=True)  # (T, E): one row per template
        mean = emb.mean(dim=0)  # (E,) the ensemble
        weights.append(mean / mean.norm())  # re-normalised
    return torch.stack(weights, dim=1)  # (E, C)


@torch.no_grad()
def zero_shot_predict(
    model: CLIP, images, classifier: torch.Tensor, batch_size: int = 500, return_logits=False
):
    """Class index (B,) of each image: argmax over classes of 100·cos(I_e, class vector).

    With return_logits=True returns the logits (B, C) instead.
    """
    check_instance(model, CLIP, "model")
    check_int(batch_size, "batch_size", 1, 1_000_000)
    if not isinstance(classifier, torch.Tensor) or classifier.ndim != 2:
        got = tuple(classifier.shape) if isinstance(classifier, torch.Tensor) else classifier
        raise ValueError(f"classifier must be a tensor (E, C) from zero_shot_classifier; got {got}")
    if classifier.shape[0] != model.config.embed_dim:
        raise ValueError(
            f"classifier must have embed_dim={model.config.embed_dim} rows; got shape "
            f"{tuple(classifier.shape)}"
        )
    check_device(classifier, "classifier", None)
    if not classifier.is_floating_point():
        raise TypeError(f"classifier must be a float tensor (E, C); got dtype {classifier.dtype}")
    check_finite(classifier, "classifier")
    classifier = classifier.to(model.device)
    c = model.config
    images = prepare_images(images, c.image_size, c.in_channels)  # checked once, then batched
    logits = torch.cat(
        [
            100.0 * model.encode_image(images[s : s + batch_size], normalize=True) @ classifier
            for s in range(0, len(images), batch_size)
        ]
    )  # (B, C)
    return logits if return_logits else logits.argmax(dim=-1)


def recall_at_k(image_emb, text_emb, captions, k: int = 1) -> dict[str, float]:
    """Retrieval recall@k over a gallery of n (image, caption) pairs.

    text->image: for each caption, rank the n images by cosine similarity; a hit when one of
    the top k images has the same caption as the query (ShapeWorld repeats captions, so any
    image the caption describes equally well counts). image->text likewise over the texts.
    Returns {"t2i": recall, "i2t": recall}.
    """
    _check_emb(image_emb, "image_emb")
    _check_emb(text_emb, "text_emb")
    captions = _check_strings(captions, "captions")
    n = image_emb.shape[0]
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must have the same width d; got {image_emb.shape[1]} and "
            f"{text_emb.shape[1]}"
        )
    if text_emb.shape[0] != n or len(captions) != n:
        raise ValueError(
            f"image_emb, text_emb and captions must have the same length; got {n}, "
            f"{text_emb.shape[0]} and {len(captions)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}]; got {k!r}")
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap = torch.tensor([ids[c] for c in captions], device=sim.device)  # caption id per item
    top_t = sim.topk(k, dim=1).indices  # (n, k): best texts for each image
    top_i = sim.T.topk(k, dim=1).indices  # (n, k): best images for each text
    i2t = (cap[top_t] == cap[:, None]).any(dim=1).float().mean().item()
    t2i = (cap[top_i] == cap[:, None]).any(dim=1).float().mean().item()
    return {"t2i": t2i, "i2t": i2t}


# ----------------------------------------------------------------------------------------------
# Training and evaluation on ShapeWorld
# ----------------------------------------------------------------------------------------------


def training_batch(
    step: int,
    batch_size: int = 128,
    seed: int = 0,
    image_size: int = 32,
    short_captions: float = 0.0,
):
    """Fresh `train` scenes for step `step`: uint8 images (B, 3, H, W) and token dict.

    Captions use all four templates (drawn at random per scene), so the text encoder meets
    every wording the zero-shot prompts will use. With probability `short_captions` a scene's
    caption is replaced by a bare list of its objects ('a red circle and a blue cross'): the
    kind of prompt zero-shot classification uses, which the four templates never produce.
    """
    stream = 1_000_000 * (seed + 1) + step  # scene seeds apart from evaluation seeds
    scenes = sw.sample_scenes("train", batch_size, seed=stream, image_size=image_size)
    images = torch.from_numpy(sw.render(scenes, image_size)).permute(0, 3, 1, 2)
    rng = np.random.default_rng([seed, step, 7])
    captions = mixed_captions(scenes, rng, short_captions)
    return images, _TOKENIZER(captions, padding=True)


def clip_training_loss(model: CLIP, batch) -> torch.Tensor:
    """clip_loss of a batch; first clamps t so that exp(t) stays in [1, 100]."""
    images, tokens = batch
    model.clamp_logit_scale_()
    image_emb = model.encode_image(images, normalize=True)  # I_e: (B, E)
    text_emb = model.encode_text(tokens, normalize=True)  # T_e: (B, E)
    return clip_loss(image_emb, text_emb, model.scale())


def train_clip(
    steps: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 2e-3,
    config: CLIPConfig | None = None,
    warmup: int = 50,
    short_captions: float = 0.5,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
) -> tuple[CLIP, list[float]]:
    """Train CLIP from scratch on ShapeWorld `train`. Returns the model (in eval mode) and the
    loss of every step.

    time_budget: stop after this many seconds even when fewer than `steps` steps have run (a
    cap for live runs in a notebook; the learning-rate schedule is still laid out over `steps`).

    short_captions: the share of scenes captioned with a bare object list ('a red circle and
    a blue cross', see `training_batch`). Without them zero-shot prompts such as "a photo of a
    red circle" lie outside the training captions and zero-shot accuracy stays near 0.2-0.6
    even when retrieval is above 0.9; with 0.25-0.5 it reaches 0.97-1.0.
    """
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    model = CLIP(config or CLIPConfig()).to(get_device(device))
    history = fit(
        model, clip_training_loss,
        lambda step: training_batch(step, batch_size, seed, short_captions=short_captions),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(warmup, steps // 2), cosine=True,
        progress=progress, desc="clip",
    )  # fmt: skip
    model.eval()
    return model, history


def recall_gallery(seed: int = 0, n: int = 1000, image_size: int = 32, max_objects: int = 3):
    """The retrieval gallery: n `test` scenes (1 to max_objects objects, as in training), each
    with its canonical caption (template 0: size, colour, shape and position of every object,
    e.g. 'a small red circle on the left and a large blue cross at the top').

    Why canonical: a scene's caption template is drawn at random and cannot be seen in the
    image, so "same caption" over random templates would cap recall far below 1 even for a
    perfect model. Template 0 names everything visible and nothing else, so the caption is a
    function of the image: a perfect model reaches recall 1, and two images share a caption
    exactly when they look alike (a hit on such a twin counts).
    """
    images, scenes = sw.generate(
        "test", n, seed=seed, image_size=image_size, max_objects=max_objects
    )
    captions = [sw.describe(s, template=0) for s in scenes]
    return torch.from_numpy(images).permute(0, 3, 1, 2), captions


@torch.no_grad()
def evaluate_clip(model: CLIP, seed: int = 0, n: int = 1000, recall_max_objects: int = 3) -> dict:
    """The issue's metrics on freshly generated images (deterministic in seed)."""
    model.eval()
    size = model.config.image_size
    classifier = zero_shot_classifier(model, _TOKENIZER, CLASSNAMES, TEMPLATES)
    out = {}
    for key, split in (("zero_shot_acc", "test"), ("zero_shot_acc_heldout", "heldout")):
        images, scenes = sw.generate(split, n, seed=seed, image_size=size, max_objects=1)
        labels = torch.tensor(
            [CLASSNAMES.index(f"{s['objects'][0]['color']} {s['objects'][0]['shape']}")
             for s in scenes]
        )  # fmt: skip
        pred = zero_shot_predict(model, torch.from_numpy(images).permute(0, 3, 1, 2), classifier)
        out[key] = round((pred.cpu() == labels).float().mean().item(), 4)
    images, captions = recall_gallery(seed, n, size, recall_max_objects)
    image_emb = torch.cat([model.encode_image(images[s : s + 500]) for s in range(0, n, 500)])
    text_emb = torch.cat(
        [model.encode_text(_TOKENIZER(captions[s : s + 500])) for s in range(0, n, 500)]
    )
    r = recall_at_k(image_emb, text_emb, captions, k=1)
    out["recall_at_1_t2i"] = round(r["t2i"], 4)
    out["recall_at_1_i2t"] = round(r["i2t"], 4)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    return out


def load_pretrained(device=None) -> CLIP:
    """The shipped CLIP (minimodels/weights/clip.safetensors)."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(CLIP, weights_path("clip"), device=device)
