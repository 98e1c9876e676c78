"""Latent diffusion: diffuse in the small latent space of an autoencoder, not in pixels.

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models" (the
model behind Stable Diffusion). Two stages, trained one after the other:

1. A variational autoencoder (VAE) squeezes an image into a latent grid and back::

       x (B, 3, 24, 24) in [-1, 1] --encode--> z (B, 4, 6, 6) --decode--> x̃ ≈ x

   24·24·3 = 1728 numbers become 6·6·4 = 144: twelve times fewer (Stable Diffusion: 8× per
   side, 4 channels, the same shape of code). The encoder gives a Gaussian q(z | x) =
   N(μ(x), σ²(x)) per latent number; training minimises the reconstruction error plus a small
   KL term that keeps q close to N(0, I) (the ELBO of notebook 04, with a Gaussian latent)::

       loss = ‖x − decode(z)‖² + β · KL(q(z | x) ‖ N(0, I)),     z = μ + σ ⊙ ε

2. A denoiser learns the usual ε-prediction objective, but on scaled latents
   z₀ = (encode(x) − shift_factor) · scaling_factor (unit variance, as diffusion expects)::

       z_t = √ᾱ_t · z₀ + √(1−ᾱ_t) · ε,        loss = ‖ε − ε_θ(z_t, t, c)‖²

   Sampling runs the same scheduler as in pixel space, from z_T ~ N(0, I) of the latent's
   shape, and decodes only once at the end: x = decode(z₀ / scaling_factor + shift_factor).

The denoiser is a small Diffusion Transformer (`minimodels.dit`) conditioned on the shipped
CLIP's text embedding; `minimodels.pipelines.LatentDiffusionPipeline` samples with it (prompt ->
guided denoising of latents -> one decode), and `minimodels.recipes.latent` trains both stages::

    python -m minimodels.pretrain latent     # the VAE, minutes on one CPU thread
    python -m minimodels.pretrain dit        # the latent DiT, minutes on one CPU thread

Names follow diffusers' ``AutoencoderKL``: ``encode``/``decode`` and a ``scaling_factor`` /
``shift_factor`` in the config. Where diffusers' ``encode`` returns the distribution, ours
returns its mean μ(x) (what diffusion is trained on here); ``encode_distribution`` gives
(μ, log σ²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_instance, check_tensor


@dataclass
class AutoencoderConfig:
    image_size: int = 24  # 24 = 6 · 4: a 6×6 latent grid
    in_channels: int = 3
    latent_channels: int = 4  # numbers per latent cell (Stable Diffusion: 4)
    block_out_channels: tuple[int, int] = (32, 64)  # widths at full and half resolution
    norm_num_groups: int = 8
    scaling_factor: float = 1.0  # z₀ = (z − shift_factor) · scaling_factor, set after training
    shift_factor: float = 0.0

    @property
    def latent_size(self) -> int:
        return self.image_size // 4  # two stride-2 steps


def _conv_block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """3×3 convolution, GroupNorm, SiLU: the building block of both halves."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU()
    )


class Autoencoder(nn.Module):
    """A small convolutional VAE: two stride-2 steps down, two up.

        encoder: x (B, 3, 24, 24) -> (B, 32, 24, 24) -> (B, 64, 12, 12) -> (B, 64, 6, 6)
                 -> 1×1 conv -> (μ, log σ²), each (B, 4, 6, 6)
        decoder: z (B, 4, 6, 6) -> (B, 64, 6, 6) -> (B, 32, 12, 12) -> (B, 32, 24, 24)
                 -> x̃ (B, 3, 24, 24)

    Trained by `minimodels.recipes.latent.train_autoencoder` (reconstruction + β · KL).
    """

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = c = check_instance(config or AutoencoderConfig(), AutoencoderConfig, "config")
        if c.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4; got {c.image_size}")
        w0, w1 = c.block_out_channels
        g = c.norm_num_groups
        self.encoder = nn.Sequential(
            _conv_block(c.in_channels, w0, g),
            nn.Conv2d(w0, w0, 4, stride=2, padding=1), nn.SiLU(),  # 24 -> 12
            _conv_block(w0, w1, g),
            nn.Conv2d(w1, w1, 4, stride=2, padding=1), nn.SiLU(),  # 12 -> 6
            _conv_block(w1, w1, g),
            nn.Conv2d(w1, 2 * c.latent_channels, 1),  # (μ, log σ²) per cell
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(c.latent_channels, w1, 3, padding=1), nn.SiLU(),
            _conv_block(w1, w1, g),
            nn.ConvTranspose2d(w1, w0, 4, stride=2, padding=1), nn.SiLU(),  # 6 -> 12
            _conv_block(w0, w0, g),
            nn.ConvTranspose2d(w0, w0, 4, stride=2, padding=1), nn.SiLU(),  # 12 -> 24
            _conv_block(w0, w0, g),
            nn.Conv2d(w0, c.in_channels, 3, padding=1),
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.decoder[0].weight.device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.latent_channels, c.latent_size, c.latent_size)

    def _check(self, x, name: str, shape: tuple[int, int, int]) -> None:
        layout = f"(B, {shape[0]}, {shape[1]}, {shape[2]})"
        if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            raise TypeError(
                f"{name} must be float in [-1, 1]; got uint8 (convert with "
                "minimodels.data.images.to_tensor(images, (-1, 1)))"
            )
        check_tensor(x, name, 4, layout, floating=True, model_device=self.device)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{name} must have shape {layout}; got {tuple(x.shape)}")

    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [-1, 1] -> (μ, log σ²) of q(z | x), both (B, 4, H/4, W/4)"""
        c = self.config
        self._check(images, "images", (c.in_channels, c.image_size, c.image_size))
        mean, logvar = self.encoder(images.to(self.device)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # σ² between e⁻³⁰ and e²⁰, as diffusers clamps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) in [-1, 1] -> latents z = μ(x) (B, 4, H/4, W/4)."""
        return self.encode_distribution(images)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents z (B, 4, H/4, W/4) -> images (B, 3, H, W), about [-1, 1]."""
        self._check(latents, "latents", self.latent_shape)
        return self.decoder(latents.to(self.device))

    @staticmethod
    def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, 1)) summed over each image's latent numbers: (B,).

        KL = ½ Σ (μ² + σ² − 1 − log σ²)
        """
        return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        return (z - c.shift_factor) * c.scaling_factor  # z₀ = (z − shift) · scale

    def unscale_latents(self, z0: torch.Tensor) -> torch.Tensor:
        c = self.config
        return z0 / c.scaling_factor + c.shift_factor  # z = z₀ / scale + shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction decode(encode(x)) (from the mean: no sampling)."""
        return self.decode(self.encode(images))
