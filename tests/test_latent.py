"""The latent autoencoder: shapes, the latent scaling, and its entry-point checks."""

import pytest
import torch

from minimodels.latent import Autoencoder, AutoencoderConfig


def test_shapes_and_latent_scaling_round_trip():
    vae = Autoencoder(AutoencoderConfig(scaling_factor=2.5, shift_factor=0.3))
    x = torch.rand(3, 3, 24, 24) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (3, 16, 6, 6) == (3,) + vae.latent_shape  # 16·6·6 = 576 numbers of 1728
    assert vae.decode(z).shape == x.shape
    torch.testing.assert_close(vae(x), vae.decode(z))
    torch.testing.assert_close(vae.unscale_latents(vae.scale_latents(z)), z)
    torch.testing.assert_close(vae.scale_latents(torch.full_like(z, 0.3)), torch.zeros_like(z))


def test_each_latent_cell_codes_its_own_patch():
    torch.manual_seed(0)
    vae = Autoencoder()
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 4:8, 8:12] = 1.0  # the patch at row 1, column 2 of the 6×6 grid
    with torch.no_grad():
        dz = vae.encode(x) - vae.encode(torch.zeros_like(x))
    changed = dz.abs().sum(1)[0] > 1e-6  # (6, 6): which cells moved
    assert changed[1, 2] and changed.sum() == 1


def test_bad_inputs_raise_clear_errors():
    vae = Autoencoder()
    with pytest.raises(TypeError, match=r"to_tensor\(images, \(-1, 1\)\)"):
        vae.encode(torch.zeros(1, 3, 24, 24, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 24, 24\)"):
        vae.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        vae.encode(torch.zeros(3, 24, 24))
    with pytest.raises(ValueError, match="latents must have shape"):
        vae.decode(torch.zeros(1, 8, 6, 6))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        Autoencoder(AutoencoderConfig(image_size=30))
    with pytest.raises(ValueError, match="at most patch_size"):
        Autoencoder(AutoencoderConfig(latent_channels=64))
