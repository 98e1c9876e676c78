"""The conditional GAN: its classes, a single pass of G per image, and the prompt check."""

import pytest
import torch

from minimodels.gan import PAIRS, ConditionalGAN, GANConfig


def test_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    z, y = torch.randn(4, 32), torch.tensor([0, 1, 2, 3])
    x = gan.generator(z, y)
    assert x.shape == (4, 3, 16, 16) and x.abs().max() <= 1  # tanh: [-1, 1]
    assert gan.discriminator(x, y).shape == (4,)


def test_generate_is_one_pass_per_prompt_repeatable_in_the_seed():
    torch.manual_seed(0)
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    prompts = [f"a {c} {s}" for c, s in PAIRS[:3]]
    x = gan.generate(prompts, seed=1)
    assert x.shape == (3, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, gan.generate(prompts, seed=1))
    assert (x - gan.generate(prompts, seed=2)).abs().max() > 0


def test_prompts_name_a_training_pair():
    assert ConditionalGAN.labels(["there is a red circle"]).tolist() == [
        PAIRS.index(("red", "circle"))
    ]
    with pytest.raises(ValueError, match="colour-shape pair"):
        ConditionalGAN.labels(["a red triangle"])  # held out: not a training class
    with pytest.raises(TypeError, match="prompts"):
        ConditionalGAN.labels("a red circle")
    with pytest.raises(ValueError, match="image_size"):
        ConditionalGAN(GANConfig(image_size=10))
