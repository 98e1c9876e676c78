"""Latent diffusion: diffuse in the small latent space of an autoencoder, not in pixels.

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models" (the
model behind Stable Diffusion). Two stages, trained one after the other:

1. An autoencoder squeezes an image into a latent grid and back::

       x (B, 3, 24, 24) in [-1, 1] --encode--> z (B, 16, 6, 6) --decode--> x̃ ≈ x

   24·24·3 = 1728 numbers become 6·6·16 = 576: three times fewer. Ours is linear, one 4×4
   patch at a time, and fitted in closed form (PCA); Stable Diffusion's is a deep network.

2. A denoiser learns the usual ε-prediction objective, but on scaled latents
   z₀ = (encode(x) − shift_factor) · scaling_factor (unit variance, as diffusion expects)::

       z_t = √ᾱ_t · z₀ + √(1−ᾱ_t) · ε,        loss = ‖ε − ε_θ(z_t, t, c)‖²

   Sampling runs the same scheduler as in pixel space, from z_T ~ N(0, I) of the latent's
   shape, and decodes only once at the end: x = decode(z₀ / scaling_factor + shift_factor).

The denoiser is a small Diffusion Transformer (`minimodels.dit`) conditioned on the shipped
CLIP's text embedding; `minimodels.pipelines.LatentDiffusionPipeline` samples with it (prompt ->
guided denoising of latents -> one decode), and `minimodels.recipes.latent` fits both stages::

    python -m minimodels.pretrain latent     # the autoencoder (PCA of 4×4 patches), seconds
    python -m minimodels.pretrain dit        # the latent DiT, minutes on one CPU thread

Names follow diffusers: the autoencoder has ``encode``/``decode`` and a ``scaling_factor`` /
``shift_factor`` in its config as ``AutoencoderKL`` does, but it is a plain deterministic
autoencoder (``encode`` returns the latent tensor, not a distribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_instance, check_tensor
from minimodels.layers import patchify, unpatchify


@dataclass
class AutoencoderConfig:
    image_size: int = 24  # 24 = 6 · 4: a 6×6 latent grid
    in_channels: int = 3
    latent_channels: int = 16  # numbers kept per patch (of patch_size² · 3 = 48)
    patch_size: int = 4  # each latent cell codes one 4×4 patch: 24×24 -> 6×6
    scaling_factor: float = 1.0  # z₀ = (z − shift_factor) · scaling_factor
    shift_factor: float = 0.0

    @property
    def latent_size(self) -> int:
        return self.image_size // self.patch_size


class Autoencoder(nn.Module):
    """The simplest autoencoder that works here: linear, one 4×4 patch at a time.

        encode: x (B, 3, 24, 24) -patchify-> (B, 36, 48) -W_e-> (B, 36, 16) -> z (B, 16, 6, 6)
        decode: z -> (B, 36, 16) -W_d-> (B, 36, 48) -unpatchify-> x̃ (B, 3, 24, 24)

    It is fitted in closed form (`minimodels.recipes.latent.fit_autoencoder`): the best linear
    code of a patch under squared error keeps its top principal components (PCA; gradient
    descent on the same loss would find the same subspace). The codes are whitened, so every
    latent channel has unit variance, as diffusion expects. Stable Diffusion's autoencoder is
    a deep non-linear network trained for days; a small non-linear one trained for a few CPU
    minutes here drew only coloured blobs, while this one keeps the shapes the judge reads.
    """

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = c = check_instance(config or AutoencoderConfig(), AutoencoderConfig, "config")
        patch_dim = c.patch_size**2 * c.in_channels  # 48 numbers per patch
        if c.image_size % c.patch_size or c.latent_channels > patch_dim:
            raise ValueError(
                f"image_size must be divisible by patch_size and latent_channels at most "
                f"patch_size² · in_channels = {patch_dim}; got {c.image_size}, {c.patch_size}, "
                f"{c.latent_channels}"
            )
        self.encoder = nn.Linear(patch_dim, c.latent_channels)  # W_e: patch -> code
        self.decoder = nn.Linear(c.latent_channels, patch_dim)  # W_d: code -> patch

    @property
    def device(self) -> torch.device:
        return self.decoder.weight.device

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
        check_tensor(x, name, 4, layout, floating=True)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{name} must have shape {layout}; got {tuple(x.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) in [-1, 1] -> latents z (B, 16, H/4, W/4)."""
        c = self.config
        self._check(images, "images", (c.in_channels, c.image_size, c.image_size))
        patches = patchify(images.to(self.device), c.patch_size)  # (B, N, 48)
        z = self.encoder(patches)  # (B, N, 16)
        g = c.latent_size
        return z.transpose(1, 2).reshape(len(z), c.latent_channels, g, g)  # (B, 16, 6, 6)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents z (B, 16, H/4, W/4) -> images (B, 3, H, W), about [-1, 1]."""
        self._check(latents, "latents", self.latent_shape)
        c = self.config
        z = latents.to(self.device).flatten(2).transpose(1, 2)  # (B, N, 16)
        return unpatchify(self.decoder(z), c.patch_size, c.image_size)  # (B, 3, H, W)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        return (z - c.shift_factor) * c.scaling_factor  # z₀ = (z − shift) · scale

    def unscale_latents(self, z0: torch.Tensor) -> torch.Tensor:
        c = self.config
        return z0 / c.scaling_factor + c.shift_factor  # z = z₀ / scale + shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction decode(encode(x))."""
        return self.decode(self.encode(images))
