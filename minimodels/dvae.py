"""The discrete VAE of DALL-E (stage 1): an image <-> a grid of integer codes.

The dVAE turns a 32×32 image into an h×w grid of integer codes in [0, K) and back (the shipped
one: downsample=2, a 16×16 grid; the config's default, 4, gives 8×8):

    encoder: image (B, 3, 32, 32) -> logits (B, K, h, w)       one distribution per grid cell
    codes:   argmax over K        -> (B, h, w)                 the image's "tokens"
    decoder: codebook[codes]      -> image (B, 3, 32, 32)

Three ways to make the discrete step trainable are implemented (`DVAEConfig.quantizer`):

* ``"gumbel"`` (DALL-E): Gumbel-softmax relaxation. The decoder receives the soft mixture
  Σ_j y_j e_j with y = softmax((logits + g) / τ), g ~ Gumbel(0, 1), τ annealed from 1 to 1/16,
  and the loss is the negative ELBO: reconstruction + β · KL(q(z|x) ‖ uniform) (`kl_to_uniform`).
* ``"straight_through"``: the same noise, but the forward pass uses the hard one-hot code and the
  gradient flows through the soft y (``hard=True`` in ``torch.nn.functional.gumbel_softmax``).
* ``"vq"`` (VQ-VAE): the encoder outputs a vector E(x) per cell and the code is the nearest
  codebook entry, argmin_j ‖E(x) − e_j‖; codebook and commitment losses, straight-through gradient.

    dvae = minimodels.pretrained("dvae")
    codes = dvae.encode(images)           # uint8 (B, 3, 32, 32) -> int64 (B, 16, 16)
    recon = dvae.decode(codes)            # float (B, 3, 32, 32) in [0, 1]

Stage 2, the prior that writes these codes from a caption, is `minimodels.dalle`. Training and
evaluation are in `minimodels/recipes/dvae.py` (``python -m minimodels.pretrain dvae``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import (
    check_bool,
    check_float,
    check_images,
    check_int,
    check_str,
    check_tensor,
)

QUANTIZERS = ("gumbel", "straight_through", "vq")


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
    check_tensor(logits, "logits", floating=True)
    tau = check_float(tau, "tau", 0.0, min_inclusive=False)
    check_bool(hard, "hard")
    check_int(dim, "dim", -logits.ndim, logits.ndim - 1)
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
    if z_e.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"z_e's last dimension must equal the codebook width {codebook.shape[-1]}; "
            f"got z_e {tuple(z_e.shape)}"
        )
    flat = z_e.reshape(-1, z_e.shape[-1]).to(codebook.dtype)  # (N, D)
    # ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²   (N, K)
    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
    return dist.argmin(1).view(z_e.shape[:-1])


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q ‖ p) in nats of q = softmax(logits) along `dim` to the uniform prior p_k = 1/K.

    KL = Σ_k q_k log(q_k / (1/K)) = Σ_k q_k log(q_k · K) = log K − H(q): 0 when q is uniform,
    log K when q is one-hot. One value per distribution: the dVAE's logits (B, K, h, w) give
    (B, h, w), the KL of each grid cell (the ELBO's KL term is their sum over the grid).
    """
    check_tensor(logits, "logits", floating=True)
    check_int(dim, "dim", -logits.ndim, logits.ndim - 1)
    log_q = F.log_softmax(logits, dim=dim)  # log q_k
    return (log_q.exp() * (log_q + math.log(logits.shape[dim]))).sum(dim)  # Σ_k q_k log(q_k·K)


# ----------------------------------------------------------------------------------------------
# The discrete VAE
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

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


class ResBlock(nn.Module):
    """x + Conv1×1(ReLU(Conv3×3(ReLU(x)))): a residual block of the encoder and the decoder."""

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
        check_str(c.quantizer, "config.quantizer", QUANTIZERS)
        if c.downsample not in (2, 4, 8) or c.image_size % c.downsample:
            raise ValueError(
                f"config.downsample must be 2, 4 or 8 and divide config.image_size; got "
                f"{c.downsample} and {c.image_size}"
            )
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

    def _pixels(self, images) -> torch.Tensor:
        """The entry check: uint8 (B, 3, H, W) in 0..255 or float in [0, 1] -> float32 in
        [0, 1] on the model's device (the same contract as CLIP's image tower)."""
        return check_images(images, "images", self.config.image_size).to(self.device)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels x (B, 3, H, W) in [0, 1] -> encoder output (B, K or D, h, w)."""
        c = self.config
        x = x * 2 - 1  # [0, 1] -> [-1, 1]
        if c.coords:
            ramp = torch.linspace(-1, 1, c.image_size, device=x.device)
            yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
            xy = torch.stack([xx, yy])[None].expand(len(x), -1, -1, -1)  # (B, 2, H, W)
            x = torch.cat([x, xy], 1)  # (B, 5, H, W)
        return self.encoder(x)

    def encode_logits(self, images) -> torch.Tensor:
        """Logits of q(z | x): (B, K, h, w). Not defined for the VQ quantizer."""
        if self.config.quantizer == "vq":
            raise ValueError("a VQ dVAE has no logits (it uses nearest neighbours); use encode")
        return self._features(self._pixels(images))

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (B, 3, H, W) -> codes (B, h, w) int64: argmax of the logits (or nearest code)."""
        feats = self._features(self._pixels(images))
        if self.config.quantizer == "vq":
            return nearest_code(feats.permute(0, 2, 3, 1), self.codebook.weight)  # (B, h, w)
        return feats.argmax(1)  # (B, h, w)

    def decode_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, h, w) -> images (B, 3, H, W), unclamped (about [0, 1])."""
        return self.decoder(z) * 0.5 + 0.5

    @torch.no_grad()
    def decode(self, codes) -> torch.Tensor:
        """Codes (B, h, w) in [0, K) -> images float (B, 3, H, W) in [0, 1]."""
        g, K = self.config.grid, self.config.codebook_size
        check_tensor(codes, "codes", 3, f"(B, {g}, {g})", floating=False)
        if tuple(codes.shape[1:]) != (g, g):
            raise ValueError(f"codes must have shape (B, {g}, {g}); got {tuple(codes.shape)}")
        if codes.device.type == "cpu" and (codes.min() < 0 or codes.max() >= K):  # CPU only
            raise ValueError(
                f"codes must lie in [0, {K}); got values in "
                f"[{codes.min().item()}, {codes.max().item()}]"
            )
        z = self.codebook(codes.long().to(self.device)).permute(0, 3, 1, 2)  # (B, D, h, w)
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
        (keeps every code in use, as wav2vec 2.0's diversity loss does). Both ELBO terms are
        means, the squared error over the D pixel values and the KL over the N cells: up to a
        constant, this is 2σ²/D times the negative ELBO of a Gaussian decoder N(x̂, σ²) with
        β = 2σ²N/D (β = 0, as shipped, is the limit σ → 0: a plain autoencoder's objective).
        vq: ‖x − D(e_k)‖² + ‖sg[E(x)] − e_k‖² + commit·‖E(x) − sg[e_k]‖².
        """
        K = self.config.codebook_size
        x = self._pixels(images)  # (B, 3, H, W) in [0, 1]
        feats = self._features(x)
        if self.config.quantizer == "vq":
            z_e = feats.permute(0, 2, 3, 1)  # (B, h, w, D)
            codes = nearest_code(z_e.detach(), self.codebook.weight)  # argmin_j ‖E(x) − e_j‖
            e_k = self.codebook(codes)  # (B, h, w, D)
            codebook_loss = F.mse_loss(e_k, z_e.detach())  # ‖sg[E(x)] − e_k‖²
            commit_loss = F.mse_loss(z_e, e_k.detach())  # ‖E(x) − sg[e_k]‖²
            z_q = z_e + (e_k - z_e).detach()  # straight-through: forward e_k, gradient to E(x)
            rec = F.mse_loss(self.decode_vectors(z_q.permute(0, 3, 1, 2)), x)
            usage = F.one_hot(codes, K).float().mean((0, 1, 2))  # (K,) share of each code
            return {
                "loss": rec + codebook_loss + commit * commit_loss,
                "reconstruction": rec,
                "perplexity": torch.exp(-(usage * (usage + 1e-10).log()).sum()),
            }
        logits = feats  # (B, K, h, w)
        y = gumbel_softmax(logits, tau, hard=self.config.quantizer == "straight_through", dim=1)
        rec = F.mse_loss(self.decode_soft(y), x)  # ‖x − D(Σ_j y_j e_j)‖²
        kl = kl_to_uniform(logits).mean()  # KL(q(z | x) ‖ U) of each cell, averaged over cells
        q_bar = F.log_softmax(logits, dim=1).exp().mean((0, 2, 3))  # (K,) average use of each code
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
