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
``CLIP.from_hf`` loads OpenAI's weights from a transformers CLIPModel (see ``hf_key_map``).

    from minimodels.clip import CLIP, CLIPConfig, clip_loss
    from minimodels.text import Tokenizer
    model, tok = CLIP(CLIPConfig()), Tokenizer()
    logits_per_image, logits_per_text = model(images, tok(["a red circle", ...]))

Training and evaluation on ShapeWorld (the batches, ``train_clip``, ``evaluate_clip``, the
shipped weights) live in ``minimodels/recipes/clip.py``.

Shape letters: B batch, N patches (grid_size²), L tokens, D encoder width, E shared width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import (
    check_device,
    check_ids,
    check_images,
    check_instance,
    check_int,
    check_str,
    check_strings,
    check_tensor,
)
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
    # Where OpenAI's CLIP differs from the toy: `CLIP.from_hf` sets these; the defaults are ours.
    vision_mlp_width: int | None = None  # the MLP's hidden width; None: mlp_ratio·vision_width
    text_mlp_width: int | None = None  # the same for the text blocks; None: mlp_ratio·text_width
    activation: str = "gelu"  # the MLPs': "gelu", or "quick_gelu" h·σ(1.702 h) as in OpenAI's
    layer_norm_eps: float = 1e-5  # ε of every LayerNorm
    patch_bias: bool = True  # whether the patch embedding's conv has a bias (OpenAI's has none)
    causal_text: bool = False  # True: text token t attends to tokens 0..t only, as in OpenAI's
    text_pool: str = "cls"  # "cls": position 0; "eos": the first eos_token_id in each row;
    eos_token_id: int | None = None  # "argmax": the largest id (the eos in OpenAI's vocabulary)
    pad_token_id: int | None = _TOKENIZER.pad_token_id  # masked without an attention_mask
    pixels_normalized: bool = False  # True: images are pixel_values, (x − mean)/std per channel


def text_inputs(tokens, attention_mask, vocab_size: int, context_length: int, pad_token_id):
    """What a text encoder reads -> (input_ids (B, L) long, keep (B, L) bool, True = a word).

    tokens: input_ids (B, L), or the Tokenizer's dict (its "attention_mask" is used unless one
    is passed). Without a mask, ids equal to pad_token_id are left out (none if it is None).
    Shared by CLIP, ViLBERT and ViLT.
    """
    if isinstance(tokens, Mapping):  # our Tokenizer's dict, or transformers' BatchEncoding
        attention_mask = tokens.get("attention_mask") if attention_mask is None else attention_mask
        tokens = tokens.get("input_ids")
    ids = check_ids(tokens, "tokens", vocab_size, context_length)  # (B, L)
    if attention_mask is None:
        if pad_token_id is None:
            return ids, torch.ones_like(ids, dtype=torch.bool)  # every id is a word
        return ids, ids != pad_token_id
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != ids.shape:
        got = getattr(attention_mask, "shape", attention_mask)
        raise ValueError(f"attention_mask must have the shape of tokens {tuple(ids.shape)}; "
                         f"got {got!r:.60}")  # fmt: skip
    check_device(attention_mask, "attention_mask", None)  # not on the meta device
    return ids, attention_mask.bool().to(ids.device)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class CLIP(nn.Module):
    """A dual encoder: ViT for images, transformer for text, projections into one space."""

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        c = CLIPConfig() if config is None else check_instance(config, CLIPConfig, "config")
        pairs = (("image_size", "patch_size"), ("vision_width", "vision_heads"),
                 ("text_width", "text_heads"))  # fmt: skip
        for size, by in pairs:  # structural: PyTorch would fail deep inside otherwise
            if getattr(c, size) % getattr(c, by):
                raise ValueError(
                    f"{size}={getattr(c, size)} must be divisible by {by}={getattr(c, by)}"
                )
        check_str(c.text_pool, "text_pool", ("cls", "eos", "argmax"))
        if c.text_pool == "eos" and c.eos_token_id is None:
            raise ValueError('text_pool="eos" needs an eos_token_id')
        self.config = c
        self.pad_token_id = c.pad_token_id
        eps = c.layer_norm_eps

        def block(width, nh, mlp_width):  # mlp_width None: mlp_ratio·width
            ratio = c.mlp_ratio if mlp_width is None else mlp_width / width
            return TransformerBlock(width, nh, ratio, c.dropout, activation=c.activation, eps=eps)

        # Image encoder: z₀ = [x_cls; x_p E] + E_pos, then L pre-norm blocks, pooled at [CLS].
        self.patch_embed = PatchEmbedding(
            c.image_size, c.patch_size, c.in_channels, c.vision_width, True, c.patch_bias
        )
        self.ln_pre = nn.LayerNorm(c.vision_width, eps=eps)
        self.vision_blocks = nn.ModuleList(
            block(c.vision_width, c.vision_heads, c.vision_mlp_width)
            for _ in range(c.vision_layers)
        )
        self.ln_post = nn.LayerNorm(c.vision_width, eps=eps)
        self.visual_proj = nn.Linear(c.vision_width, c.embed_dim, bias=False)  # W_i

        # Text encoder: token + position embeddings, bidirectional blocks with a padding mask,
        # pooled at [CLS] (position 0, where the Tokenizer puts it). OpenAI's CLIP: causal
        # blocks, pooled at the end-of-text token (the only one that has seen every word).
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.text_blocks = nn.ModuleList(
            block(c.text_width, c.text_heads, c.text_mlp_width) for _ in range(c.text_layers)
        )
        self.ln_final = nn.LayerNorm(c.text_width, eps=eps)
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
        x = check_images(images, "images", c.image_size, c.in_channels,
                         normalized=c.pixels_normalized).to(self.device)  # fmt: skip
        x = self.ln_pre(self.patch_embed(x))  # (B, 1+N, D): [CLS] then N patches
        for block in self.vision_blocks[:upto]:
            x = block(x)  # (B, 1+N, D)
        return x

    def encode_image(self, images, normalize: bool = False) -> torch.Tensor:
        """images uint8 (B, 3, H, W) or float in [0, 1] -> I_e (B, E), unit rows if normalize.
        With config.pixels_normalized (`from_hf`): pixel_values, (x − mean)/std per channel."""
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
        upto = check_int(layer, "layer", -n, n - 1) % n + 1  # how many blocks to run
        return self._vision_tokens(images, upto)[:, 1:]  # (B, N, D)

    # ---- text tower --------------------------------------------------------------------------

    def encode_text_features(self, tokens, attention_mask=None) -> torch.Tensor:
        """Per-token features of the text tower (B, L, D) after the final LayerNorm, without
        pooling or projection: what a text-to-image model cross-attends to (as Stable
        Diffusion uses CLIPTextModel's last_hidden_state). Rows at padding are not meaningful;
        mask them with the tokens' attention_mask.
        """
        return self._text_tokens(tokens, attention_mask)[1]

    def _text_tokens(self, tokens, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the ids (B, L) and the hidden states after the final LayerNorm (B, L, D)."""
        c = self.config
        ids, keep = text_inputs(tokens, attention_mask, c.vocab_size, c.context_length,
                                self.pad_token_id)  # fmt: skip
        ids, keep = ids.to(self.device), keep.to(self.device)  # (B, L) each
        L = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # (B, L, D)
        for block in self.text_blocks:  # padding keys are ignored; causal: t sees 0..t only
            x = block(x, key_padding_mask=keep, is_causal=c.causal_text)
        return ids, self.ln_final(x)  # (B, L), (B, L, D)

    def encode_text(self, tokens, normalize: bool = False, attention_mask=None) -> torch.Tensor:
        """tokens: input_ids (B, L) or the Tokenizer's dict -> T_e (B, E), pooled at [CLS]
        (or at the end-of-text token: see CLIPConfig.text_pool)."""
        ids, x = self._text_tokens(tokens, attention_mask)  # (B, L), (B, L, D)
        pool = self.config.text_pool
        if pool == "cls":
            at = torch.zeros_like(ids[:, 0])  # [CLS] at position 0: (B,)
        elif pool == "eos":  # the first eos_token_id of each row (0 if there is none, as in HF)
            at = (ids == self.config.eos_token_id).int().argmax(dim=-1)
        else:  # "argmax": the largest id, the end-of-text token in OpenAI's vocabulary
            at = ids.argmax(dim=-1)
        features = self.text_proj(x[torch.arange(len(x), device=x.device), at])  # T_f W_t: (B, E)
        return F.normalize(features, dim=-1) if normalize else features

    # ---- both --------------------------------------------------------------------------------

    def forward(self, images, tokens):
        """-> (logits_per_image (B_i, B_t), logits_per_text (B_t, B_i)), as in open_clip."""
        image_emb = self.encode_image(images, normalize=True)  # I_e: (B_i, E)
        text_emb = self.encode_text(tokens, normalize=True)  # T_e: (B_t, E)
        logits_per_image = self.scale() * image_emb @ text_emb.T  # np.dot(I_e, T_e.T) * exp(t)
        return logits_per_image, logits_per_image.T

    # ---- OpenAI's weights, from Hugging Face -------------------------------------------------

    @classmethod
    def from_hf(cls, model) -> CLIP:
        """Our CLIP with the weights of a transformers CLIPModel, read through its ``.config``
        and ``.state_dict()`` (minimodels itself does not import transformers)::

            model = CLIP.from_hf(transformers.CLIPModel.from_pretrained(name))
            model.encode_image(pixel_values)  # = hf.get_image_features(pixel_values).pooler_output
            model.encode_text(input_ids, attention_mask=mask)  # = hf.get_text_features(...)

        Images are the pixel_values of HF's CLIPImageProcessor (config.pixels_normalized), ids
        those of its tokenizer, with its attention_mask (no id counts as [PAD]). forward clamps
        exp(t) at 100, HF's does not (OpenAI's weights have t = log 100)."""
        hf = getattr(model, "config", None)
        v, t = getattr(hf, "vision_config", None), getattr(hf, "text_config", None)
        if v is None or t is None or not callable(getattr(model, "state_dict", None)):
            raise TypeError(
                "model must be a transformers CLIPModel (.config.vision_config, .config."
                f"text_config and .state_dict()); got {type(model).__name__}"
            )
        act, eps = (v.hidden_act, t.hidden_act), (v.layer_norm_eps, t.layer_norm_eps)
        if act[0] not in ("quick_gelu", "gelu") or act[0] != act[1] or eps[0] != eps[1]:
            raise ValueError(f"CLIP.from_hf needs hidden_act 'quick_gelu' or 'gelu' and one "
                             f"layer_norm_eps for both towers; got {act}, {eps}")  # fmt: skip
        if not isinstance(eos := t.eos_token_id, int) or isinstance(eos, bool):
            raise ValueError(f"CLIP.from_hf needs text_config.eos_token_id, an int; got {eos!r}")
        config = CLIPConfig(
            image_size=v.image_size, patch_size=v.patch_size, in_channels=v.num_channels,
            vision_width=v.hidden_size, vision_layers=v.num_hidden_layers,
            vision_heads=v.num_attention_heads, vision_mlp_width=v.intermediate_size,
            vocab_size=t.vocab_size, context_length=t.max_position_embeddings,
            text_width=t.hidden_size, text_layers=t.num_hidden_layers,
            text_heads=t.num_attention_heads, text_mlp_width=t.intermediate_size,
            embed_dim=hf.projection_dim, activation=v.hidden_act, layer_norm_eps=v.layer_norm_eps,
            patch_bias=False, causal_text=True, pad_token_id=None, pixels_normalized=True,
            # HF's rule: configs from before transformers PR #24773 say eos_token_id=2 and pool
            # at the largest id (OpenAI's end-of-text, 49407, is the last of its vocabulary)
            text_pool="argmax" if eos == 2 else "eos", eos_token_id=eos,
        )  # fmt: skip
        ours, keys = cls(config), hf_key_map(config)  # keys: our name -> HF's
        state = {k: w for k, w in model.state_dict().items() if not k.endswith("position_ids")}
        if odd := sorted(set(keys.values()) ^ set(state)):
            raise ValueError(f"model's weights do not fit CLIP.from_hf: {odd[:4]} are in only "
                             "one of the model's state_dict and hf_key_map")  # fmt: skip
        shapes = ours.state_dict()  # x_cls and E_pos: HF's lack our leading 1s
        ours.load_state_dict({k: state[h].reshape(shapes[k].shape) for k, h in keys.items()})
        return ours.eval()


def hf_key_map(config: CLIPConfig) -> dict[str, str]:
    """Which of our weights is which of a transformers CLIPModel's: {our key: HF's key}.
    HF's x_cls is (D,) and E_pos (1+N, D), ours (1, 1, D) and (1, 1+N, D)."""
    vis, txt = "vision_model.", "text_model."
    keys = {
        "patch_embed.proj.weight": vis + "embeddings.patch_embedding.weight",  # E, a conv
        "patch_embed.cls_token": vis + "embeddings.class_embedding",  # x_cls
        "patch_embed.pos_embed": vis + "embeddings.position_embedding.weight",  # E_pos
        "visual_proj.weight": "visual_projection.weight",  # W_i
        "token_embedding.weight": txt + "embeddings.token_embedding.weight",
        "positional_embedding": txt + "embeddings.position_embedding.weight",
        "text_proj.weight": "text_projection.weight",  # W_t
        "logit_scale": "logit_scale",  # t
    }
    modules = {"ln_pre": vis + "pre_layrnorm", "ln_post": vis + "post_layernorm",  # (sic)
               "ln_final": txt + "final_layer_norm"}  # fmt: skip
    block = {  # our TransformerBlock -> HF's CLIPEncoderLayer
        "ln_1": "layer_norm1", "ln_2": "layer_norm2",
        "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",  # W_q, W_k
        "attn.v_proj": "self_attn.v_proj", "attn.out_proj": "self_attn.out_proj",  # W_v, W_o
        "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2",  # W₁, W₂
    }  # fmt: skip
    for ours, hf, n in (("vision_blocks", vis, config.vision_layers),
                        ("text_blocks", txt, config.text_layers)):  # fmt: skip
        for i, (a, b) in itertools.product(range(n), block.items()):
            modules[f"{ours}.{i}.{a}"] = f"{hf}encoder.layers.{i}.{b}"
    keys |= {f"{a}.{p}": f"{b}.{p}" for a, b in modules.items() for p in ("weight", "bias")}
    return keys


# ----------------------------------------------------------------------------------------------
# The contrastive loss
# ----------------------------------------------------------------------------------------------


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP on a batch of n matching pairs.

    image_emb, text_emb: L2-normalised (n, E); row i of each comes from the same pair.
    logit_scale: the already-exponentiated scale exp(t) = 1/τ (a positive number or 0-d tensor).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (n, E) with the same n and E; got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")  # fmt: skip
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


@torch.no_grad()
def zero_shot_classifier(model: CLIP, tokenizer, classnames, templates=TEMPLATES) -> torch.Tensor:
    """One unit vector per class, (E, C): the normalised mean of the normalised embeddings of
    the class's prompts (prompt ensembling), as in CLIP's ImageNet notebook.

    templates: format strings with one "{}" for the class name, e.g. "a photo of a {}".
    """
    classnames = check_strings(classnames, "classnames")
    templates = check_strings(templates, "templates")
    if any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"each template must contain '{{}}' once; got {templates}")
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
    c = model.config
    check_tensor(classifier, "classifier", 2, "(E, C) from zero_shot_classifier", floating=True)
    if classifier.shape[0] != c.embed_dim:
        raise ValueError(f"classifier must be (E, C) with E = embed_dim = {c.embed_dim}; got "
                         f"shape {tuple(classifier.shape)}")  # fmt: skip
    classifier = classifier.to(model.device)
    images = check_images(images, "images", c.image_size, c.in_channels)  # once, then batched
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
    captions = check_strings(captions, "captions")
    n = len(captions)
    if image_emb.shape[0] != n or text_emb.shape[0] != n:
        raise ValueError(f"image_emb, text_emb and captions must have the same length; got "
                         f"{image_emb.shape[0]}, {text_emb.shape[0]} and {n}")  # fmt: skip
    k = check_int(k, "k", 1, n)
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap = torch.tensor([ids[c] for c in captions], device=sim.device)  # caption id per item
    top_t = sim.topk(k, dim=1).indices  # (n, k): best texts for each image
    top_i = sim.T.topk(k, dim=1).indices  # (n, k): best images for each text
    i2t = (cap[top_t] == cap[:, None]).any(dim=1).float().mean().item()
    t2i = (cap[top_i] == cap[:, None]).any(dim=1).float().mean().item()
    return {"t2i": t2i, "i2t": i2t}
