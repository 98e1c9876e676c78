"""The latent VAE: shapes, the KL term, the latent scaling, and its entry-point checks."""

import pytest
import torch

from minimodels.latent import Autoencoder, AutoencoderConfig


def test_shapes_and_latent_scaling_round_trip():
    torch.manual_seed(0)
    vae = Autoencoder(AutoencoderConfig(scaling_factor=2.5, shift_factor=0.3)).eval()
    x = torch.rand(3, 3, 24, 24) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (3, 4, 6, 6) == (3,) + vae.latent_shape  # 4·6·6 = 144 numbers of 1728
    mean, logvar = vae.encode_distribution(x)
    assert torch.equal(mean, z) and logvar.shape == z.shape
    assert vae.decode(z).shape == x.shape
    torch.testing.assert_close(vae(x), vae.decode(z))
    torch.testing.assert_close(vae.unscale_latents(vae.scale_latents(z)), z)
    torch.testing.assert_close(vae.scale_latents(torch.full_like(z, 0.3)), torch.zeros_like(z))


def test_kl_divergence_is_the_closed_form_gaussian_kl():
    mean = torch.tensor([[0.0, 1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0, 1.0]])
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(Autoencoder.kl_divergence(mean, logvar), expected)
    assert Autoencoder.kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)).eq(0).all()


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
    with pytest.raises(ValueError, match="divisible by 4"):
        Autoencoder(AutoencoderConfig(image_size=30))
