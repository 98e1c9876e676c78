"""Latent diffusion's recipe: the VAE's training, the training pool, DiT training, the shipped
weights and the two evaluations."""

import pytest
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels.checkpoint import weights_path
from minimodels.data.images import to_tensor
from minimodels.diffusion import DDIMScheduler
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.latent import Autoencoder
from minimodels.pipelines import LatentDiffusionPipeline
from minimodels.recipes.latent import (
    colour_faithfulness,
    evaluate_dit,
    evaluate_latent,
    latent_training_pool,
    load_dit,
    load_latent,
    train_autoencoder,
    train_latent_dit,
    vae_loss,
)

SHIPPED = weights_path("latent").with_suffix(".safetensors").exists()
SHIPPED_DIT = weights_path("dit").with_suffix(".safetensors").exists()


def test_vae_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    vae = Autoencoder()
    x = to_tensor(sw.generate("train", 8, seed=3, image_size=24)[0], (-1, 1))
    plain = vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1))
    weighted = vae_loss(vae, x, 2.0, torch.Generator().manual_seed(1))
    mean, logvar = vae.encode_distribution(x)
    kl = vae.kl_divergence(mean, logvar).mean() / x[0].numel()
    torch.testing.assert_close(weighted - plain, 2.0 * kl)


def test_train_autoencoder_learns_is_deterministic_and_scales_its_latents():
    a, history = train_autoencoder(steps=60, n_images=128, seed=1, progress=False, device="cpu")
    b, _ = train_autoencoder(steps=60, n_images=128, seed=1, progress=False, device="cpu")
    assert isinstance(a, Autoencoder) and len(history) == 60 and not a.training
    assert sum(history[-10:]) / 10 < 0.5 * sum(history[:10]) / 10
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x = to_tensor(sw.generate("train", 64, seed=5, image_size=24)[0], (-1, 1))
    with torch.no_grad():
        assert 0.5 < a.scale_latents(a.encode(x)).std().item() < 2.0  # about unit variance
    with pytest.raises(ValueError, match="n_images"):
        train_autoencoder(n_images=1)


def test_training_pool_holds_scaled_latents_and_unit_prompt_embeddings():
    torch.manual_seed(0)
    vae, clip = Autoencoder().eval(), minimodels.pretrained("clip")
    latents, embeds = latent_training_pool(vae, clip, n=40, seed=2, batch_size=16)
    assert latents.shape == (40, 4, 6, 6) and embeds.shape == (40, clip.config.embed_dim)
    torch.testing.assert_close(embeds.norm(dim=1), torch.ones(40))
    again, _ = latent_training_pool(vae, clip, n=40, seed=2, batch_size=16)
    assert torch.equal(latents, again)


def test_latent_dit_training_lowers_the_loss():
    torch.manual_seed(0)
    vae = Autoencoder().eval()
    cfg = DiTConfig(in_channels=4, hidden_size=32, num_layers=1, num_attention_heads=2, cond_dim=64)
    model, history = train_latent_dit(vae, minimodels.pretrained("clip"), steps=60,
                                      pool_size=256, config=cfg, progress=False)  # fmt: skip
    assert isinstance(model, DiTTransformer2DModel) and not model.training
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"
    with pytest.raises(ValueError, match="p_uncond"):
        train_latent_dit(vae, None, steps=1, p_uncond=1.0)


@pytest.mark.skipif(not SHIPPED, reason="no shipped latent weights")
def test_shipped_autoencoder_keeps_what_the_judge_reads():
    vae, judge = load_latent(), minimodels.pretrained("judge")
    images, scenes = sw.generate("heldout", 64, seed=123, image_size=24)
    with torch.no_grad():
        recon = vae(to_tensor(images, (-1, 1))).clamp(-1, 1)
    read = judge.read((recon + 1) / 2)
    truth = [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes]
    got = [{(o["color"], o["shape"]) for o in r["objects"]} for r in read]
    accuracy = sum(t == g for t, g in zip(truth, got)) / len(truth)
    # 4 numbers per 4×4 region (12× fewer than pixels) lose some small objects: about three
    # scenes in four come back exactly (evaluate latent: judge_exact)
    assert accuracy >= 0.65, f"the judge reads {accuracy:.2f} of the reconstructions right"


@pytest.mark.skipif(not SHIPPED_DIT, reason="no shipped DiT")
def test_shipped_latent_dit_follows_the_colour_of_the_prompt_with_guidance():
    pipe, judge = load_dit(), minimodels.pretrained("judge")
    assert isinstance(pipe, LatentDiffusionPipeline)
    pipe.scheduler = DDIMScheduler()
    pairs = sw.TRAIN_PAIRS[::2]  # 12 colour-shape pairs, every colour
    prompts = [f"a {c} {s}" for c, s in pairs]

    def agreement(w):
        images = pipe(prompts, num_inference_steps=20, guidance_scale=w,
                      generator=torch.Generator().manual_seed(5))  # fmt: skip
        return colour_faithfulness(images, pairs, judge)

    unguided, guided = agreement(0.0), agreement(7.0)
    assert guided >= 0.6 and guided > unguided + 0.3, (unguided, guided)


@pytest.mark.skipif(not SHIPPED, reason="no shipped latent weights")
def test_evaluate_latent_reports_a_faithful_reconstruction():
    out = evaluate_latent(seed=3, n=32)
    assert out["latent_shape"] == [4, 6, 6] and out["compression"] == 12.0
    assert out["reconstruction_mse"] < 0.02 and out["psnr_db"] >= 24
    assert 0.6 <= out["judge_exact"] <= out["judge_exact_original"] + 0.1
    assert abs(out["latent_std"] - 1) < 0.2  # scaled to unit variance
    assert {k: v for k, v in out.items() if "seconds" not in k} == {
        k: v for k, v in evaluate_latent(seed=3, n=32).items() if "seconds" not in k
    }


@pytest.mark.skipif(not SHIPPED_DIT, reason="no shipped DiT")
def test_evaluate_dit_reports_faithfulness_with_and_without_guidance():
    out = evaluate_dit(seed=2, n=8)
    for key in ("prompt_faithfulness", "colour_faithfulness", "valid_shape_rate"):
        assert 0 <= out[key] <= 1
    assert out["colour_faithfulness"] >= out["prompt_faithfulness"]  # colour alone is easier
    assert {"prompt_faithfulness_no_guidance", "prompt_faithfulness_unconditional", "fid_toy",
            "fid_toy_real", "seconds_per_image_ddim50_cfg"} <= set(out)  # fmt: skip
