"""The dVAE's recipe (minimodels/recipes/dvae.py): batches, the τ schedule, a short training run,
the two figures of the evaluation, and the shipped weights against their bars."""

import math

import pytest
import torch

import minimodels
from minimodels.dvae import DVAE, DVAEConfig, kl_to_uniform
from minimodels.recipes.dvae import (
    codebook_perplexity,
    dvae_batch,
    evaluate_dvae,
    finetune_dvae,
    load_dvae,
    psnr,
    tau_schedule,
    train_dvae,
)

TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)


def test_tau_is_annealed_exponentially_from_1_to_a_16th():
    assert tau_schedule(0, 40) == 1.0 and math.isclose(tau_schedule(39, 40), 1 / 16)
    assert math.isclose(tau_schedule(39, 79), 1 / 4, rel_tol=1e-9)  # halfway: √(1/16)
    taus = [tau_schedule(t, 40) for t in range(40)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert tau_schedule(100, 40) == tau_schedule(39, 40)  # stays at τ_end after the schedule


def test_batches_are_fresh_uint8_images_per_step():
    a = dvae_batch(0, batch_size=4, seed=0)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, dvae_batch(0, batch_size=4, seed=0))
    assert not torch.equal(a, dvae_batch(1, batch_size=4, seed=0))
    assert not torch.equal(a, dvae_batch(0, batch_size=4, seed=1))


def test_short_dvae_training_lowers_reconstruction_error():
    model, history = train_dvae(steps=40, batch_size=16, config=TINY_DVAE, progress=False)
    assert isinstance(model, DVAE) and not model.training and len(history) == 40
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5


def test_finetuning_with_a_larger_beta_moves_q_towards_the_uniform_prior():
    """finetune_dvae trains a copy (the model given is left alone); β pulls the KL down, while
    the reconstruction alone (β = 0, no diversity term) sharpens q(z | x)."""
    torch.manual_seed(0)
    model = DVAE(TINY_DVAE)
    with torch.no_grad():
        model.encoder[-1].weight *= 10  # logits with some spread to start from
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = dvae_batch(999, batch_size=16, seed=5)

    def kl(m):
        with torch.no_grad():
            return kl_to_uniform(m.encode_logits(x)).mean().item()

    free, history = finetune_dvae(model, steps=15, beta=0.0, diversity=0.0)
    held, _ = finetune_dvae(model, steps=15, beta=1.0, diversity=0.0)
    assert len(history) == 15 and not free.training and free is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    kls = kl(model), kl(free), kl(held)
    assert kls[2] < 0.5 * kls[0] < kls[1], kls
    with pytest.raises(ValueError, match="beta"):
        finetune_dvae(model, beta=-1.0)
    with pytest.raises(TypeError, match="DVAE"):
        finetune_dvae(torch.nn.Linear(2, 2))


def test_metrics():
    x = torch.rand(2, 3, 4, 4)
    assert math.isclose(psnr(x, x + 0.1), 20.0, rel_tol=1e-4)  # MSE 0.01 -> 20 dB
    assert psnr(x, x) == float("inf")
    assert math.isclose(codebook_perplexity(torch.arange(8).repeat(3), 16), 8.0, rel_tol=1e-6)
    assert math.isclose(codebook_perplexity(torch.zeros(10, dtype=torch.long), 16), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:1])
    with pytest.raises(ValueError, match=r"\[0, codebook_size=16\)"):
        codebook_perplexity(torch.tensor([0, 16]), 16)
    with pytest.raises(TypeError, match="integer"):
        codebook_perplexity(torch.zeros(4), 16)


def test_evaluate_a_given_model_is_deterministic_in_the_seed():
    torch.manual_seed(0)
    model = DVAE(TINY_DVAE)
    a = evaluate_dvae(seed=3, n=40, model=model)
    assert set(a) == {"psnr", "codebook_perplexity", "codebook_size"}
    assert a == evaluate_dvae(seed=3, n=40, model=model)
    assert 1 <= a["codebook_perplexity"] <= a["codebook_size"] == 16


def test_shipped_dvae_meets_the_bars_on_a_fresh_seed():
    metrics = evaluate_dvae(seed=12345, n=300, model=load_dvae(device="cpu"))
    assert metrics["psnr"] >= 24, metrics
    assert metrics["codebook_perplexity"] >= metrics["codebook_size"] / 4, metrics


def test_pretrained_dvae_is_the_recipes_model():
    model = minimodels.pretrained("dvae", device="cpu")
    assert isinstance(model, DVAE) and model.config.grid == 16 and model.config.codebook_size == 128
