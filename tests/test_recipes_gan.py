"""The GAN's recipe: a few steps of the two-player game move both networks; the trilemma's
samplers and measurements."""

import math

import pytest
import tiny
import torch

from minimodels.gan import PAIRS, ConditionalGAN, GANConfig
from minimodels.metrics import fid_toy
from minimodels.recipes import gan as recipe
from minimodels.recipes.ddpm import real_images
from minimodels.recipes.gan import train_gan, training_batch
from minimodels.unet import UNet2DModel, UNetConfig


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


@pytest.fixture(scope="module")
def tiny_samplers():
    """The trilemma's samplers around a tiny U-Net and a tiny GAN, both 16×16 and untrained."""
    torch.manual_seed(0)
    unet = UNet2DModel(UNetConfig(beta_schedule="cosine", **tiny.UNET)).eval()
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8)).eval()
    return recipe.trilemma_samplers(unet, gan)


def test_trilemma_samplers_draw_n_images_in_range_repeatably(tiny_samplers):
    assert list(tiny_samplers) == ["DDPM 1000", "DDIM 50", "DDIM 25", "DDIM 5", "GAN"]
    for label in ("DDIM 5", "GAN"):
        x = tiny_samplers[label](3, torch.Generator().manual_seed(1))
        assert x.shape == (3, 3, 16, 16) and 0 <= x.min() and x.max() <= 1, label
        again = tiny_samplers[label](3, torch.Generator().manual_seed(1))
        other = tiny_samplers[label](3, torch.Generator().manual_seed(2))
        assert torch.equal(x, again) and not torch.equal(x, other), label
    with pytest.raises(TypeError, match="gan"):
        recipe.trilemma_samplers(UNet2DModel(UNetConfig(**tiny.UNET)), "gan")


def test_measure_trilemma_gives_every_corner_and_real_rows(tiny_samplers):
    samplers = {k: tiny_samplers[k] for k in ("DDIM 5", "GAN")}
    rows, images = recipe.measure_trilemma(samplers, 4, seed=3, reference=8)
    assert list(rows) == list(images) == ["DDIM 5", "GAN", "real 16×16"]
    assert all(x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1 for x in images.values())
    quality = {"valid_shape_rate", "fid_toy"}
    diversity = {"color_entropy", "shape_entropy", "position_entropy", "distinct_pairs"}
    speed = {"seconds_per_sample", "cpu_seconds_per_sample"}
    assert set(rows["GAN"]) == quality | diversity | speed
    assert set(rows["real 16×16"]) == quality | diversity  # real images take no time to sample
    for row in rows.values():
        assert 0 <= row["valid_shape_rate"] <= 1 and 1 <= row["distinct_pairs"] <= 4
    assert rows["real 16×16"]["fid_toy"] < rows["GAN"]["fid_toy"]  # an untrained GAN is far off
    reference, _ = real_images(8, 3 + 100_000, 16)  # max(n, reference) real images
    assert rows["GAN"]["fid_toy"] == pytest.approx(fid_toy(images["GAN"], reference))
    again, _ = recipe.measure_trilemma(samplers, 4, seed=3, reference=8)
    for label, row in rows.items():  # deterministic in seed, apart from the timings
        assert {k: v for k, v in row.items() if k not in speed} == {
            k: v for k, v in again[label].items() if k not in speed}  # fmt: skip
    with pytest.raises(ValueError, match="n"):
        recipe.measure_trilemma(samplers, 1, seed=3)
    with pytest.raises(TypeError, match="samplers"):
        recipe.measure_trilemma(list(samplers.values()), 4, seed=3)


def test_notebook_gan_is_the_one_notebook_05_trains():
    gan = recipe.notebook_gan(seed=0, steps=2, batch_size=8)
    torch.manual_seed(0)  # as the notebook does it
    live = ConditionalGAN()
    train_gan(live, steps=2, batch_size=8, progress=False)
    for (name, a), b in zip(gan.state_dict().items(), live.state_dict().values()):
        assert torch.equal(a, b), name
    assert recipe.NOTEBOOK_GAN == {"steps": 300, "batch_size": 32}


def test_evaluate_trilemma_measures_the_shipped_unet_and_a_gan(monkeypatch):
    everything = recipe.trilemma_samplers

    def cheap(unet, gan):  # DDPM-1000 alone would take seconds: its sampler is tested above
        return {k: v for k, v in everything(unet, gan).items() if k in ("DDIM 5", "GAN")}

    monkeypatch.setattr(recipe, "trilemma_samplers", cheap)
    out = recipe.evaluate_trilemma(seed=10, n=2, gan_steps=1, gan_batch_size=4)
    assert {k: out[k] for k in ("n", "seed", "gan_steps", "gan_batch_size")} == {
        "n": 2, "seed": 10, "gan_steps": 1, "gan_batch_size": 4}  # fmt: skip
    assert list(out["rows"]) == ["DDIM 5", "GAN", "real 24×24", "real 20×20"]  # the U-Net's side
    ddim, gan = out["rows"]["DDIM 5"], out["rows"]["GAN"]
    assert ddim["seconds_per_sample"] > gan["seconds_per_sample"]  # 5 U-Net calls against one G
    assert all(v == round(v, 5) for row in out["rows"].values() for v in row.values())
