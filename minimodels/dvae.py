"""The discrete VAE of DALL-E (stage 1): an image <-> a grid of integer codes.

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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import check_device, check_int, check_tensor
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


def load_dvae(device=None) -> DVAE:
    """The shipped dVAE (minimodels/weights/dvae.safetensors)."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(DVAE, weights_path("dvae"), device=device)
