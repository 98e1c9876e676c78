"""The GAN's recipe: a few steps of the two-player game move both networks."""

import math

import pytest
import torch

from minimodels.gan import PAIRS, ConditionalGAN, GANConfig
from minimodels.recipes.gan import train_gan, training_batch


def test_training_batch_holds_images_in_range_and_their_classes():
    x, y = training_batch(0, 8, 0, 16)
    assert x.shape == (8, 3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert y.shape == (8,) and 0 <= y.min() and y.max() < len(PAIRS)


def test_conditional_gan_trains():
    torch.manual_seed(0)
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    before_g = [p.detach().clone() for p in gan.generator.parameters()]
    before_d = [p.detach().clone() for p in gan.discriminator.parameters()]
    history = train_gan(gan, steps=3, batch_size=8, progress=False)
    assert len(history["d"]) == 3 and all(math.isfinite(v) for v in history["g"] + history["d"])
    assert any((a - b).abs().max() > 0 for a, b in zip(before_g, gan.generator.parameters()))
    assert any((a - b).abs().max() > 0 for a, b in zip(before_d, gan.discriminator.parameters()))
    assert not gan.generator.training
    with pytest.raises(ValueError, match="steps"):
        train_gan(gan, steps=0)
