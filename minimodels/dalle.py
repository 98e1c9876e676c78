"""DALL-E in miniature: a discrete VAE (stage 1), an autoregressive text-to-image prior (stage 2).

Stage 1, the dVAE, turns a 32×32 image into an h×w grid of integer codes in [0, K) and back
(the shipped one: downsample=2, a 16×16 grid; the config's default, 4, gives 8×8):

    encoder: image (B, 3, 32, 32) -> logits (B, K, h, w)       one distribution per grid cell
    codes:   argmax over K        -> (B, h, w)                 the image's "tokens"
    decoder: codebook[codes]      -> image (B, 3, 32, 32)

Three ways to make the discrete step trainable are implemented (`DVAEConfig.quantizer`):

* ``"gumbel"`` (DALL-E): Gumbel-softmax relaxation. The decoder receives the soft mixture
  Σ_j y_j e_j with y = softmax((logits + g) / τ), g ~ Gumbel(0, 1), τ annealed from 1 to 1/16,
  and the loss is the ELBO: reconstruction + β · KL(q(z|x) ‖ uniform).
* ``"straight_through"``: the same noise, but the forward pass uses the hard one-hot code and the
  gradient flows through the soft y (``hard=True`` in ``torch.nn.functional.gumbel_softmax``).
* ``"vq"`` (VQ-VAE): the encoder outputs a vector E(x) per cell and the code is the nearest
  codebook entry, argmin_j ‖E(x) − e_j‖; codebook and commitment losses, straight-through gradient.

Stage 2, `DALLEPrior`, is a GPT-style causal transformer over one stream:

    [text tokens, padded to text_length] <soi> [h·w image codes in raster order]

trained with cross-entropy on the image codes plus a small weight on the text tokens. `DALLE` is
the pipeline (like a diffusers pipeline): tokenizer + prior + dVAE, with `generate` and `rerank`.

    pipe = minimodels.pretrained("dalle")
    images = pipe.generate(["a red circle"], n_per_prompt=8, seed=0)     # (8, 3, 32, 32) in [0, 1]
    best = pipe.rerank(images, "a red circle", minimodels.pretrained("clip"))

Shipped weights: ``python -m minimodels.pretrain dvae``, then ``... pretrain dalle``.
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
from minimodels._checks import check_device, check_int, check_tensor
from minimodels.layers import TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()
QUANTIZERS = ("gumbel", "straight_through", "vq")


# ----------------------------------------------------------------------------------------------
# Input checks: each error names the parameter, what was expected and what came
# ----------------------------------------------------------------------------------------------


def _check_int(value, name: str, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__})")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be an int >= {lo}; got {value}")
    return int(value)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value}")
    return float(value)


def prepare_images(images, image_size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) in 0..255 or float (B, 3, H, W) in [0, 1] -> float32 in [0, 1].

    The same input contract as CLIP's image tower, so the check lives in one place.
    """
    from minimodels.clip import prepare_images as clip_prepare_images

    return clip_prepare_images(images, image_size, in_channels=3)


# ----------------------------------------------------------------------------------------------
# The two quantisation steps (what the notebook's exercises rebuild)
# ----------------------------------------------------------------------------------------------


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample y = softmax((logits + g) / τ), g_j = −log(−log u_j), u_j ~ U(0, 1).

    As τ → 0 the sample tends to the one-hot vector of argmax_j (logits_j + g_j), which is an
    exact sample of Categorical(softmax(logits)) (the Gumbel-max trick); larger τ gives smoother
    mixtures. With ``hard=True`` the forward value is that one-hot vector while the gradient is
    the soft y's (straight-through), as in ``torch.nn.functional.gumbel_softmax``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor; got {type(logits).__name__}")
    check_tensor(logits, "logits", floating=True)
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the K categories)")
    tau = _check_positive(tau, "tau")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -logits.ndim <= dim < logits.ndim:
        raise ValueError(f"dim must be an int in [{-logits.ndim}, {logits.ndim - 1}]; got {dim!r}")
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be True or False; got {hard!r}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))  # g ~ Gumbel(0, 1)
    # shifting by the max changes nothing in the softmax but keeps huge logits from overflowing
    logits = logits - logits.amax(dim, keepdim=True).detach()
    y_soft = F.softmax((logits + g) / tau, dim=dim)  # y = softmax((logits + g) / τ)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft  # forward: one-hot; backward: ∂y_soft


def nearest_code(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """VQ-VAE quantisation: index of the nearest codebook row, argmin_j ‖z_e − e_j‖².

    z_e (..., D), codebook (K, D) -> codes (...) int64.
    """
    check_tensor(z_e, "z_e", floating=True)
    check_tensor(codebook, "codebook", ndim=2, layout="(K, D)", floating=True)
    if z_e.ndim < 1 or z_e.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"z_e's last dimension must equal the codebook width {codebook.shape[-1]}; "
            f"got z_e {tuple(z_e.shape)}"
        )
    flat = z_e.reshape(-1, z_e.shape[-1]).to(codebook.dtype)  # (N, D)
    # ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²   (N, K)
    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
    return dist.argmin(1).view(z_e.shape[:-1])


# ----------------------------------------------------------------------------------------------
# Stage 1: the discrete VAE
# ----------------------------------------------------------------------------------------------


@dataclass
class DVAEConfig:
    image_size: int = 32
    downsample: int = 4  # the grid is image_size / downsample cells wide (32 -> 8×8; 2: 16×16)
    codebook_size: int = 128  # K
    code_dim: int = 32  # width of each codebook vector e_j
    hidden: int = 48  # channels of the conv stacks
    quantizer: str = "gumbel"  # "gumbel", "straight_through" or "vq"
    coords: bool = True  # feed (x, y) coordinates to the encoder (see DVAE)

    def __post_init__(self):
        for name in ("image_size", "downsample", "codebook_size", "code_dim", "hidden"):
            _check_int(getattr(self, name), name, lo=1)
        if self.downsample not in (2, 4, 8):
            raise ValueError(f"downsample must be 2, 4 or 8; got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size must be divisible by downsample; got {self.image_size} and "
                f"{self.downsample}"
            )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2; got {self.codebook_size}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}; got {self.quantizer!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 1)
        )

    def forward(self, x):
        return x + self.net(x)


class DVAE(nn.Module):
    """Convolutional encoder -> K logits per cell; codebook (K, D); convolutional decoder.

    With ``coords=True`` the encoder also sees two channels holding each pixel's (x, y): the
    plain background looks the same everywhere, and without a position to tell cells apart
    every background cell would take the same code, leaving most of the codebook idle.
    """

    config_class = DVAEConfig

    def __init__(self, config: DVAEConfig | None = None):
        super().__init__()
        self.config = c = config or DVAEConfig()
        h, n_down = c.hidden, int(math.log2(c.downsample))
        out = c.code_dim if c.quantizer == "vq" else c.codebook_size
        enc = [nn.Conv2d(3 + 2 * c.coords, h, 3, padding=1)]
        for _ in range(n_down):
            enc += [nn.ReLU(), nn.Conv2d(h, h, 4, stride=2, padding=1), ResBlock(h)]
        enc += [nn.ReLU(), nn.Conv2d(h, out, 1)]
        self.encoder = nn.Sequential(*enc)
        self.codebook = nn.Embedding(c.codebook_size, c.code_dim)  # e_j, j = 0..K-1
        dec = [nn.Conv2d(c.code_dim, h, 3, padding=1), ResBlock(h)]
        for i in range(n_down):  # no ResBlock at full resolution (the costliest place)
            dec += [nn.ReLU(), nn.ConvTranspose2d(h, h, 4, stride=2, padding=1)]
            dec += [ResBlock(h)] if i < n_down - 1 else []
        dec += [nn.ReLU(), nn.Conv2d(h, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        if c.quantizer == "vq":
            nn.init.uniform_(self.codebook.weight, -1 / c.codebook_size, 1 / c.codebook_size)

    @property
    def device(self) -> torch.device:
        return self.codebook.weight.device

    def _encode_features(self, images) -> torch.Tensor:
        """Images -> encoder output (B, K or D, h, w)."""
        c = self.config
        x = prepare_images(images, c.image_size).to(self.device)  # (B, 3, H, W) in [0, 1]
        x = x * 2 - 1
        if c.coords:
            ramp = torch.linspace(-1, 1, c.image_size, device=x.device)
            yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
            xy = torch.stack([xx, yy])[None].expand(len(x), -1, -1, -1)  # (B, 2, H, W)
            x = torch.cat([x, xy], 1)
        return self.encoder(x)

    def encode_logits(self, images) -> torch.Tensor:
        """Logits of q(z | x): (B, K, h, w). Not defined for the VQ quantizer."""
        if self.config.quantizer == "vq":
            raise ValueError("a VQ dVAE has no logits (it uses nearest neighbours); use encode")
        return self._encode_features(images)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (B, 3, H, W) -> codes (B, h, w) int64: argmax of the logits (or nearest code)."""
        feats = self._encode_features(images)
        if self.config.quantizer == "vq":
            return nearest_code(feats.permute(0, 2, 3, 1), self.codebook.weight)  # (B, h, w)
        return feats.argmax(1)  # (B, h, w)

    def _check_codes(self, codes) -> torch.Tensor:
        c = self.config
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor (B, h, w); got {type(codes).__name__}")
        check_device(codes, "codes", None)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor; got {codes.dtype}")
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (c.grid, c.grid):
            raise ValueError(
                f"codes must have shape (B, {c.grid}, {c.grid}); got {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= c.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {c.codebook_size}); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.long().to(self.device)

    def decode_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, h, w) -> images (B, 3, H, W), unclamped (about [0, 1])."""
        return self.decoder(z) * 0.5 + 0.5

    @torch.no_grad()
    def decode(self, codes) -> torch.Tensor:
        """Codes (B, h, w) in [0, K) -> images float (B, 3, H, W) in [0, 1]."""
        codes = self._check_codes(codes)
        z = self.codebook(codes).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decode_vectors(z).clamp(0, 1)

    def decode_soft(self, y: torch.Tensor) -> torch.Tensor:
        """Soft code assignments y (B, K, h, w) -> images: the decoder sees Σ_j y_j e_j."""
        z = torch.einsum("bkhw,kd->bdhw", y, self.codebook.weight)  # (B, D, h, w)
        return self.decode_vectors(z)

    def loss(
        self, images, tau: float = 1.0, beta: float = 0.0, diversity: float = 0.0, commit=0.25
    ) -> dict[str, torch.Tensor]:
        """Training loss of one batch, by quantizer; returns a dict with "loss" and its terms.

        gumbel / straight_through: the negative ELBO, ‖x − D(Σ_j y_j e_j)‖² + β·KL(q ‖ U(K)),
        plus `diversity` · KL(q̄ ‖ U(K)) where q̄ is q averaged over the batch and the cells
        (keeps every code in use, as wav2vec 2.0's diversity loss does).
        vq: ‖x − D(e_k)‖² + ‖sg[E(x)] − e_k‖² + commit·‖E(x) − sg[e_k]‖².
        """
        c = self.config
        x = prepare_images(images, c.image_size).to(self.device)
        feats = self._encode_features(x)
        K = c.codebook_size
        if c.quantizer == "vq":
            z_e = feats.permute(0, 2, 3, 1)  # (B, h, w, D)
            codes = nearest_code(z_e.detach(), self.codebook.weight)  # argmin_j ‖E(x) − e_j‖
            e_k = self.codebook(codes)  # (B, h, w, D)
            codebook_loss = F.mse_loss(e_k, z_e.detach())  # ‖sg[E(x)] − e_k‖²
            commit_loss = F.mse_loss(z_e, e_k.detach())  # ‖E(x) − sg[e_k]‖²
            z_q = z_e + (e_k - z_e).detach()  # straight-through: forward e_k, gradient to E(x)
            recon = self.decode_vectors(z_q.permute(0, 3, 1, 2))
            rec = F.mse_loss(recon, x)
            usage = F.one_hot(codes, K).float().mean((0, 1, 2))
            return {
                "loss": rec + codebook_loss + commit * commit_loss,
                "reconstruction": rec,
                "perplexity": torch.exp(-(usage * (usage + 1e-10).log()).sum()),
            }
        logits = feats  # (B, K, h, w)
        y = gumbel_softmax(logits, tau, hard=c.quantizer == "straight_through", dim=1)
        recon = self.decode_soft(y)  # (B, 3, H, W)
        rec = F.mse_loss(recon, x)
        log_q = F.log_softmax(logits, dim=1)  # log q(z | x) per cell
        # KL(q ‖ U) = Σ_j q_j log(q_j · K), averaged over cells
        kl = (log_q.exp() * (log_q + math.log(K))).sum(1).mean()
        q_bar = log_q.exp().mean((0, 2, 3))  # (K,) average use of each code
        kl_bar = (q_bar * (q_bar.clamp_min(1e-10).log() + math.log(K))).sum()
        return {
            "loss": rec + beta * kl + diversity * kl_bar,
            "reconstruction": rec,
            "kl": kl,
            "perplexity": torch.exp(-(q_bar * q_bar.clamp_min(1e-10).log()).sum()),
        }

    def forward(self, images) -> torch.Tensor:
        """Reconstruction through hard codes: decode(encode(images))."""
        return self.decode(self.encode(images))


def tau_schedule(step: int, steps: int, tau_start: float = 1.0, tau_end: float = 1 / 16):
    """Exponential annealing τ_t = τ_start · (τ_end / τ_start)^(t / T), as DALL-E anneals τ."""
    frac = min(1.0, step / max(1, steps - 1))
    return tau_start * (tau_end / tau_start) ** frac


def dvae_batch(step: int, batch_size: int = 64, seed: int = 0, image_size: int = 32):
    """Fresh `train` images (1-3 objects) for step `step`: uint8 (B, 3, H, W)."""
    stream = 3_000_000 * (seed + 1) + step  # apart from the evaluation seeds
    images, _ = sw.generate("train", batch_size, seed=stream, image_size=image_size)
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def train_dvae(
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: DVAEConfig | None = None,
    beta: float = 1e-4,
    diversity: float = 0.2,
    time_budget: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[DVAE, list[float]]:
    """Train a dVAE from scratch on ShapeWorld `train`; τ goes from 1 to 1/16 over `steps`.

    Returns the model (eval mode) and the loss of every step. With `time_budget` (seconds)
    training may stop early; τ still follows the schedule of `steps`.
    """
    from minimodels.train import fit, get_device, seed_everything

    steps = _check_int(steps, "steps", lo=1)
    seed_everything(seed)
    model = DVAE(config or DVAEConfig()).to(get_device(device))

    def loss_fn(m, batch):
        step, images = batch
        return m.loss(images, tau=tau_schedule(step, steps), beta=beta, diversity=diversity)["loss"]

    history = fit(
        model, loss_fn, lambda step: (step, dvae_batch(step, batch_size, seed)),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(50, steps // 10),
        cosine=True, progress=progress, desc=f"dvae ({model.config.quantizer})",
    )  # fmt: skip
    model.eval()
    return model, history


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log₁₀(1 / MSE)."""
    check_tensor(x, "x")
    check_tensor(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mse = F.mse_loss(x.double(), y.double()).item()
    if not math.isfinite(mse):
        raise ValueError("x and y must be images in [0, 1]; their difference overflowed")
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(H(p)) of the code usage p (how many codes are in effective use, at most K)."""
    codebook_size = check_int(codebook_size, "codebook_size", 1, 1 << 20)
    check_tensor(codes, "codes", floating=False)
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, codebook_size={codebook_size})")
    counts = torch.bincount(codes.flatten().cpu(), minlength=codebook_size).float()
    p = counts / counts.sum()
    return math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())


@torch.no_grad()
def evaluate_dvae(model: DVAE, seed: int = 0, n: int = 1000) -> dict:
    """PSNR through hard codes and codebook perplexity on n fresh `test` images."""
    model.eval()
    images, _ = sw.generate("test", n, seed=seed, image_size=model.config.image_size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    codes = torch.cat([model.encode(x[s : s + 500]) for s in range(0, n, 500)])
    recon = torch.cat([model.decode(codes[s : s + 500]).cpu() for s in range(0, n, 500)])
    return {
        "psnr": round(psnr(recon, x.float() / 255), 3),
        "codebook_perplexity": round(codebook_perplexity(codes, model.config.codebook_size), 2),
        "codebook_size": model.config.codebook_size,
    }


# ----------------------------------------------------------------------------------------------
# Stage 2: the autoregressive prior
# ----------------------------------------------------------------------------------------------


@dataclass
class DALLEConfig:
    text_vocab_size: int = _TOKENIZER.vocab_size
    text_length: int = 16  # text is padded (or cut) to this many tokens
    codebook_size: int = 128  # K: image tokens are text_vocab_size + code
    grid: int = 8  # h = w
    dim: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 3.0
    text_loss_weight: float = 1 / 8  # DALL-E weighted text 1/8 and image 7/8

    def __post_init__(self):
        for name in ("text_vocab_size", "text_length", "codebook_size", "grid", "dim", "layers",
                     "heads"):  # fmt: skip
            _check_int(getattr(self, name), name, lo=1)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads; got {self.dim} and {self.heads}")

    @property
    def seq_len(self) -> int:
        return self.text_length + 1 + self.grid**2  # text, <soi>, image codes


class DALLEPrior(nn.Module):
    """A causal transformer over [text (text_length), <soi>, image codes (grid²)].

    One vocabulary holds both: ids < text_vocab_size are the Tokenizer's, id text_vocab_size + j
    is image code j. ``forward(tokens)`` (B, T) -> logits (B, T, V) predicting token t + 1.
    """

    config_class = DALLEConfig

    def __init__(self, config: DALLEConfig | None = None):
        super().__init__()
        self.config = c = config or DALLEConfig()
        self.vocab_size = c.text_vocab_size + c.codebook_size
        self.token_embedding = nn.Embedding(self.vocab_size, c.dim)
        self.position_embedding = nn.Parameter(torch.randn(c.seq_len, c.dim) * 0.02)
        self.blocks = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.layers)]
        )
        self.ln_f = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, self.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError("tokens must be an int64 tensor (B, T)")
        if not 1 <= tokens.shape[1] <= c.seq_len:
            raise ValueError(f"tokens must have 1 to {c.seq_len} positions; got {tokens.shape[1]}")
        T = tokens.shape[1]
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[:T]  # (B,T,C)
        for block in self.blocks:
            x = block(x, is_causal=True)  # position t sees 0..t only
        return self.head(self.ln_f(x))  # (B, T, V)

    def text_tokens(self, prompts) -> torch.Tensor:
        """Prompts -> (B, text_length) ids: [CLS] words [SEP] [PAD]..., cut to text_length."""
        c = self.config
        batch = _TOKENIZER(prompts, padding="max_length", max_length=c.text_length)
        return batch["input_ids"]

    def sequence(self, prompts, codes: torch.Tensor) -> torch.Tensor:
        """The training stream (B, seq_len): text, <soi>, codes + text_vocab_size."""
        c = self.config
        text = self.text_tokens(prompts)  # (B, L)
        soi = torch.full((len(text), 1), _TOKENIZER.soi_token_id, dtype=torch.long)
        image = codes.reshape(len(codes), -1).long().cpu() + c.text_vocab_size  # (B, h·w)
        return torch.cat([text, soi, image], 1)

    def loss(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy: image positions weighted 1, text (non-padding) `text_loss_weight`."""
        c = self.config
        tokens = tokens.to(self.device)
        logits = self(tokens[:, :-1])  # (B, T-1, V): predicts tokens[:, 1:]
        target = tokens[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T-1)
        L = c.text_length
        text_ce, text_mask = ce[:, : L - 1], target[:, : L - 1] != _TOKENIZER.pad_token_id
        image_ce = ce[:, L:]  # targets are the grid² image codes
        text_loss = (text_ce * text_mask).sum() / text_mask.sum().clamp_min(1)
        image_loss = image_ce.mean()
        return {
            "loss": image_loss + c.text_loss_weight * text_loss,
            "image": image_loss,
            "text": text_loss,
        }

    def forward_cached(self, tokens: torch.Tensor, cache: list) -> torch.Tensor:
        """`forward` for the next tokens only, given the keys and values of the earlier ones.

        tokens (B, t) sit at positions P..P+t−1, where P is how many tokens `cache` already
        holds (start with ``cache = []``); their keys and values are appended to `cache`. The
        logits (B, t, V) equal those of ``forward`` on the whole sequence, at a fraction of
        the cost: sampling 256 codes one by one re-reads the cache instead of re-running every
        earlier position at every step (the KV cache of every autoregressive sampler).
        """
        c = self.config
        P = cache[0][0].shape[2] if cache else 0
        B, T = tokens.shape
        if P + T > c.seq_len:
            raise ValueError(f"the cache holds {P} positions; {T} more exceed {c.seq_len}")
        if not cache:
            cache.extend([] for _ in self.blocks)  # one [K, V] per layer
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[P : P + T]
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, is_causal=True, kv_cache=layer_cache)  # position P + t sees 0..P + t
        return self.head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def sample_codes(
        self,
        prompts,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample image codes (B, grid, grid) for B prompts, one code at a time, raster order."""
        c = self.config
        seq = self.sequence(prompts, torch.zeros(len(prompts), 0, dtype=torch.long))
        seq = seq.to(self.device)  # (B, L + 1): text and <soi>
        cache: list = []
        step_in = seq  # the first step reads the whole prompt, later steps one new code
        for _ in range(c.grid**2):
            logits = self.forward_cached(step_in, cache)[:, -1, c.text_vocab_size :]  # (B, K)
            logits = logits / temperature
            if top_k is not None and top_k < c.codebook_size:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(self.device)  # (B,1)
            step_in = nxt + c.text_vocab_size
            seq = torch.cat([seq, step_in], 1)
        return (seq[:, c.text_length + 1 :] - c.text_vocab_size).view(-1, c.grid, c.grid)


class DALLE:
    """The text-to-image pipeline: tokenizer + prior (stage 2) + dVAE decoder (stage 1)."""

    def __init__(self, prior: DALLEPrior, dvae: DVAE):
        if not isinstance(prior, DALLEPrior):
            raise TypeError(f"prior must be a DALLEPrior; got {type(prior).__name__}")
        if not isinstance(dvae, DVAE):
            raise TypeError(f"dvae must be a DVAE; got {type(dvae).__name__}")
        pc, dc = prior.config, dvae.config
        if pc.codebook_size != dc.codebook_size or pc.grid != dc.grid:
            raise ValueError(
                f"prior and dVAE disagree: prior K={pc.codebook_size}, grid={pc.grid}; "
                f"dVAE K={dc.codebook_size}, grid={dc.grid}"
            )
        self.prior, self.dvae, self.tokenizer = prior.eval(), dvae.eval(), _TOKENIZER

    def to(self, device) -> DALLE:
        self.prior.to(device)
        self.dvae.to(device)
        return self

    @torch.no_grad()
    def generate(
        self,
        prompts,
        n_per_prompt: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        return_codes: bool = False,
    ):
        """Images for each prompt: float (len(prompts) · n_per_prompt, 3, H, W) in [0, 1].

        Rows are grouped by prompt: rows i·n .. (i+1)·n − 1 belong to prompts[i]. Sampling
        uses `generator`, else a generator seeded with `seed` (same seed, same images).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of strings; got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: expected at least one prompt")
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompts must all be strings")
        n_per_prompt = check_int(n_per_prompt, "n_per_prompt", 1, 10_000)
        temperature = _check_positive(temperature, "temperature")
        if top_k is not None:
            top_k = _check_int(top_k, "top_k", lo=1)
        if generator is None:
            generator = torch.Generator().manual_seed(
                0 if seed is None else _check_int(seed, "seed", 0)
            )
        elif not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        expanded = [p for p in prompts for _ in range(n_per_prompt)]
        codes = torch.cat(
            [
                self.prior.sample_codes(expanded[s : s + 256], temperature, top_k, generator)
                for s in range(0, len(expanded), 256)
            ]
        )  # (N, h, w)
        images = self.dvae.decode(codes).cpu()  # (N, 3, H, W)
        return (images, codes.cpu()) if return_codes else images

    @torch.no_grad()
    def rerank(self, images, prompt: str, clip) -> torch.Tensor:
        """Indices of `images` ordered by the CLIP similarity to `prompt`, best first."""
        return rerank(images, prompt, clip)


@torch.no_grad()
def rerank(images, prompt: str, clip) -> torch.Tensor:
    """Order candidate images by cos(CLIP image embedding, CLIP text embedding), best first.

    images (N, 3, H, W) in [0, 1] (resized to CLIP's size if needed) -> indices (N,).
    """
    from minimodels.clip import CLIP

    if not isinstance(clip, CLIP):
        raise TypeError(f"clip must be a minimodels CLIP model; got {type(clip).__name__}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}")
    x = prepare_images(images, images.shape[-1] if isinstance(images, torch.Tensor) else 32)
    size = clip.config.image_size
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    clip.eval()
    image_emb = clip.encode_image(x.clamp(0, 1), normalize=True)  # (N, E)
    text_emb = clip.encode_text(_TOKENIZER([prompt]), normalize=True)  # (1, E)
    return (image_emb @ text_emb.T).squeeze(1).argsort(descending=True).cpu()


# ----------------------------------------------------------------------------------------------
# Training data for the prior, training, evaluation
# ----------------------------------------------------------------------------------------------


def prior_captions(scenes, rng: np.random.Generator, short: float = 0.3) -> list[str]:
    """A caption per scene: its random-template caption, or with probability `short` the bare
    object list ('a red circle'), the wording of typed prompts."""
    return [
        " and ".join(f"a {o['color']} {o['shape']}" for o in s["objects"])
        if rng.random() < short
        else s["caption"]
        for s in scenes
    ]


def prior_dataset(dvae: DVAE, n: int, seed: int = 0, single: float = 0.75, batch: int = 500):
    """n `train` scenes encoded once: (captions list, codes (n, h, w)).

    A share `single` of the scenes holds one object, the rest two: single objects dominate so
    that a small prior learns colour and shape well within its CPU budget.
    """
    rng = np.random.default_rng([seed, 5])
    n_single = int(round(n * single))
    size = dvae.config.image_size
    captions, codes = [], []
    for i, (count, max_obj) in enumerate(((n_single, 1), (n - n_single, 2))):
        if count == 0:
            continue
        images, scenes = sw.generate(
            "train", count, seed=5_000_000 * (seed + 1) + i, image_size=size,
            min_objects=max_obj, max_objects=max_obj,
        )  # fmt: skip
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        codes += [dvae.encode(x[s : s + batch]).cpu() for s in range(0, count, batch)]
        captions += prior_captions(scenes, rng)
    codes = torch.cat(codes)
    perm = torch.from_numpy(rng.permutation(n))
    return [captions[i] for i in perm.tolist()], codes[perm]


def train_prior(
    dvae: DVAE,
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: DALLEConfig | None = None,
    n_data: int = 40_000,
    time_budget: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[DALLEPrior, list[float]]:
    """Train the prior on `n_data` scenes encoded by `dvae` (see `prior_dataset`)."""
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    dvae.eval()
    captions, codes = prior_dataset(dvae, n_data, seed)
    if config is None:
        config = DALLEConfig(codebook_size=dvae.config.codebook_size, grid=dvae.config.grid)
    model = DALLEPrior(config).to(get_device(device))
    tokens = model.sequence(captions, codes)  # (n, seq_len), built once
    g = torch.Generator().manual_seed(seed)

    def batch(step):
        return tokens[torch.randint(0, len(tokens), (batch_size,), generator=g)]

    history = fit(
        model, lambda m, b: m.loss(b)["loss"], batch, steps=steps, time_budget=time_budget,
        lr=lr, warmup=min(100, steps // 10), cosine=True, weight_decay=0.01,
        progress=progress, desc="dalle prior",
    )  # fmt: skip
    model.eval()
    return model, history


def faithful(readings: list[dict], color: str, shape: str) -> list[bool]:
    """Whether the judge read an object of the asked colour and shape in each image."""
    return [
        any(o["color"] == color and o["shape"] == shape for o in r["objects"]) for r in readings
    ]


@torch.no_grad()
def evaluate_dalle(
    pipe: DALLE,
    judge,
    clip,
    seed: int = 0,
    n: int = 100,
    candidates: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> dict:
    """prompt_faithfulness (one sample per prompt), _reranked (best of `candidates` by CLIP),
    _heldout (colour-shape pairs never seen in training). Prompts: 'a {colour} {shape}';
    samples drawn with `temperature` and `top_k` (see `DALLE.generate`)."""
    rng = np.random.default_rng([seed, 11])
    out = {}
    pairs = {"train": sw.TRAIN_PAIRS, "heldout": sw.HELDOUT_PAIRS}
    for split, key in (
        ("train", "prompt_faithfulness"),
        ("heldout", "prompt_faithfulness_heldout"),
    ):
        chosen = [pairs[split][i] for i in rng.integers(len(pairs[split]), size=n)]
        prompts = [f"a {c} {s}" for c, s in chosen]
        per = candidates if split == "train" else 1
        images = pipe.generate(prompts, per, temperature, top_k, seed=seed)  # (n·per, 3, H, W)
        readings = judge.read(images)
        ok = np.array(
            [faithful([r], c, s)[0] for r, (c, s) in zip(readings, np.repeat(chosen, per, 0))]
        ).reshape(n, per)
        out[key] = round(float(ok[:, 0].mean()), 4)
        if split == "train":
            best = [
                int(rerank(images[i * per : (i + 1) * per], prompts[i], clip)[0]) for i in range(n)
            ]
            out["prompt_faithfulness_reranked"] = round(float(ok[np.arange(n), best].mean()), 4)
            out["prompt_faithfulness_any_of_8"] = round(float(ok.any(1).mean()), 4)
    return out


def load_dvae(device=None) -> DVAE:
    """The shipped dVAE (minimodels/weights/dvae.safetensors)."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(DVAE, weights_path("dvae"), device=device)


def load_pretrained(device=None) -> DALLE:
    """The shipped pipeline: prior (weights/dalle.safetensors) + dVAE (weights/dvae)."""
    from minimodels.checkpoint import load_model, weights_path

    prior = load_model(DALLEPrior, weights_path("dalle"), device=device)
    return DALLE(prior, load_dvae(device=device))


# ----------------------------------------------------------------------------------------------
# Self-checks for the notebook's exercises (each raises AssertionError with a kind message)
# ----------------------------------------------------------------------------------------------


def check_quantize(fn) -> str:
    """Check a student's `fn(z_e (N, D), codebook (K, D)) -> codes (N,)` against argmin ‖z − e‖."""
    g = torch.Generator().manual_seed(123)
    codebook = torch.randn(16, 4, generator=g)
    z_e = torch.randn(50, 4, generator=g) * 1.5
    got = fn(z_e, codebook)
    assert isinstance(got, torch.Tensor), f"return a tensor of code indices; got {type(got)}"
    assert got.shape == (50,), (
        f"expected one code per row of z_e, shape (50,); got {tuple(got.shape)}"
    )
    assert not got.is_floating_point(), (
        f"codes are indices: return an integer tensor (argmin gives int64); got {got.dtype}"
    )
    want = nearest_code(z_e, codebook)
    wrong = (got.long() != want).float().mean().item()
    if wrong > 0:
        by_dot = (z_e @ codebook.T).argmax(1)
        hint = (
            " It matches the largest dot product z·e: the distance also has the ‖e‖² term."
            if torch.equal(got.long(), by_dot)
            else " Did you take argmax instead of argmin, or the wrong dimension?"
        )
        raise AssertionError(f"{wrong:.0%} of the codes differ from argmin_j ‖z − e_j‖.{hint}")
    return "quantize: all 50 codes match argmin_j ‖z − e_j‖. Well done!"


def check_gumbel_softmax(fn) -> str:
    """Check a student's `fn(logits, tau, generator) -> y` (soft Gumbel-softmax sample)."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    y = fn(logits, 1.0, torch.Generator().manual_seed(0))
    assert isinstance(y, torch.Tensor) and y.shape == logits.shape, (
        f"return a tensor shaped like logits {tuple(logits.shape)}; got "
        f"{getattr(y, 'shape', type(y))}"
    )
    total = y.sum(-1)
    assert torch.allclose(total, torch.ones(1), atol=1e-4), (
        f"each row must sum to 1 (a softmax); got {total.item():.4f}"
    )
    assert (y >= 0).all(), "probabilities cannot be negative"
    # The sampled class frequencies must follow softmax(logits) (the Gumbel-max trick).
    g = torch.Generator().manual_seed(1)
    many = fn(logits.expand(4000, 4), 0.05, g)
    freq = F.one_hot(many.argmax(-1), 4).float().mean(0)
    p = logits.softmax(-1)[0]
    rel = ((freq - p).abs() / p).max().item()
    assert rel < 0.25, (
        f"argmax of your samples should follow softmax(logits) = {p.numpy().round(3)}; got "
        f"frequencies {freq.numpy().round(3)} (largest relative error {rel:.2f}). Check the "
        "noise: g = -log(-log(u)) with u ~ U(0, 1), added to the logits before dividing by τ."
    )
    sharp = fn(logits.expand(500, 4), 0.05, torch.Generator().manual_seed(2)).max(-1).values
    soft = fn(logits.expand(500, 4), 5.0, torch.Generator().manual_seed(2)).max(-1).values
    assert sharp.mean() > 0.9 > soft.mean(), (
        f"small τ should give nearly one-hot samples and large τ smooth ones; mean largest "
        f"entry {sharp.mean():.2f} at τ=0.05 and {soft.mean():.2f} at τ=5. Divide by τ."
    )
    return f"gumbel_softmax: frequencies match softmax(logits) (max relative error {rel:.2f})."
