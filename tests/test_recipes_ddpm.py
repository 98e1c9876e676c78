"""The U-Nets' recipe: batches, real images, training (with and without text), loading and the
three evaluations."""

import inspect

import pytest
import tiny
import torch

import minimodels
from minimodels.pipelines import DDPMPipeline, TextToImagePipeline
from minimodels.recipes import ddpm as recipe
from minimodels.train import seed_everything
from minimodels.unet import UNet2DModel, UNetConfig


def test_training_batch_is_fresh_in_range_and_repeatable():
    x, prompts = recipe.training_batch(3, batch_size=8, seed=0, image_size=24)
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5  # [-1, 1], the background dark
    assert len(prompts) == 8 and all(isinstance(p, str) and p for p in prompts)
    again, same = recipe.training_batch(3, batch_size=8, seed=0, image_size=24)
    assert torch.equal(x, again) and prompts == same
    other, _ = recipe.training_batch(4, batch_size=8, seed=0, image_size=24)
    assert not torch.equal(x, other)


def test_real_images_are_uint8_with_their_pairs():
    images, pairs = recipe.real_images(6, seed=1, image_size=24)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 24, 24)
    assert len(pairs) == 6 and all(len(p) == 2 for p in pairs)


def test_autoguidance_setting_is_what_the_pipeline_takes():
    params = inspect.signature(DDPMPipeline.__call__).parameters
    assert set(recipe.AUTOGUIDANCE) <= set(params)
    lo, hi = recipe.AUTOGUIDANCE["guidance_interval"]
    assert 0 <= lo < hi <= 1000 and recipe.AUTOGUIDANCE["guidance_scale"] > 1


def test_train_unet_lowers_the_loss():
    config = UNetConfig(beta_schedule="cosine", **tiny.UNET)
    model, history = recipe.train_unet(steps=40, batch_size=8, seed=0, lr=3e-3, config=config,
                                       snr_gamma=5.0, progress=False, device="cpu")  # fmt: skip
    assert isinstance(model, UNet2DModel) and not model.training and len(history) == 40
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}"


def test_train_unet_with_text_trains_the_cross_attention():
    config = UNetConfig(cross_attention_dim=64, **tiny.UNET)
    model, history = recipe.train_unet(steps=3, batch_size=4, seed=0, config=config, text=True,
                                       progress=False, device="cpu")  # fmt: skip
    assert len(history) == 3 and model.config.cross_attention_dim == 64
    seed_everything(0)  # the draws train_unet makes before its model: CLIP's, then the U-Net's
    minimodels.pretrained("clip", device="cpu")
    initial = UNet2DModel(config)
    moved = model.mid_attn.attn2.k_proj.weight - initial.mid_attn.attn2.k_proj.weight
    assert moved.abs().max() > 0  # the keys read the prompt's features: they were trained
    with pytest.raises(ValueError, match="cross_attention_dim=64"):
        config = UNetConfig(cross_attention_dim=32, **tiny.UNET)
        recipe.train_unet(steps=1, config=config, text=True, progress=False)


def test_shipped_pipelines_load():
    assert isinstance(recipe.load_ddpm_text(), TextToImagePipeline)
    strong, weak = recipe.load_ddpm(), recipe.load_ddpm_weak()
    assert strong.config == weak.config  # the same network: the guide differs in training only


def test_evaluations_are_deterministic_and_cover_their_claims():
    weak = recipe.evaluate_ddpm_weak(seed=2, n=8)
    assert weak == {**recipe.evaluate_ddpm_weak(seed=2, n=8), **{
        k: v for k, v in weak.items() if "seconds" in k}}  # fmt: skip
    assert weak["denoising_loss"] > weak["denoising_loss_ddpm"]  # the guide is the weaker one
    text = recipe.evaluate_ddpm_text(seed=2, n=8)
    for way in ("", "_no_guidance", "_clip_sample"):
        assert (
            0 <= text["prompt_faithfulness" + way] <= 1 and 0 <= text["valid_shape_rate" + way] <= 1
        )
        assert text["fid_toy" + way] > text["fid_toy_real"] >= 0
    full = recipe.evaluate_ddpm(seed=2, n=8, timing_batch=2, ddpm_timing_batch=1)
    assert full["prompt_faithfulness"] == text["prompt_faithfulness"]  # same prompts and noise
    assert full["autoguidance_interval"] == list(recipe.AUTOGUIDANCE["guidance_interval"])
    assert {"fid_toy", "fid_toy_no_autoguidance", "seconds_per_image_ddpm1000"} <= set(full)
