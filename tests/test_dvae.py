"""The dVAE (minimodels/dvae.py): Gumbel-softmax, nearest-code quantisation, encode / decode and
the loss terms of each quantiser, the entry checks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from minimodels import dalle
from minimodels import shapeworld as sw
from minimodels.dvae import (
    DVAE,
    QUANTIZERS,
    DVAEConfig,
    gumbel_softmax,
    kl_to_uniform,
    nearest_code,
)

TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)


@pytest.fixture(scope="module")
def images():
    x, _ = sw.generate("test", 6, seed=3)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


# ---- the two quantisation steps --------------------------------------------------------------


def test_gumbel_softmax_is_a_distribution_and_follows_the_logits():
    logits = torch.tensor([1.5, 0.0, -1.0, 0.5]).expand(20000, 4)
    y = gumbel_softmax(logits, tau=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.sum(-1), torch.ones(20000))
    freq = F.one_hot(y.argmax(-1), 4).float().mean(0)  # Gumbel-max: argmax ~ softmax(logits)
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)


def test_gumbel_softmax_samples_what_torch_samples():
    """Ours and torch.nn.functional.gumbel_softmax draw from the same distribution: the mean
    soft sample E[y] (a function of the logits and τ only) and the frequencies of hard codes."""
    logits = torch.tensor([1.0, 0.2, -0.7, 0.0, 2.0]).expand(40000, 5)
    torch.manual_seed(0)
    theirs = F.gumbel_softmax(logits, tau=0.7)
    ours = gumbel_softmax(logits, tau=0.7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=0.01, rtol=0)
    theirs_hard = F.gumbel_softmax(logits, tau=0.7, hard=True)
    ours_hard = gumbel_softmax(logits, 0.7, hard=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ours_hard.sum(-1), theirs_hard.sum(-1))  # one-hot rows, both
    torch.testing.assert_close(ours_hard.mean(0), theirs_hard.mean(0), atol=0.01, rtol=0)


def test_gumbel_softmax_temperature_and_hard_straight_through():
    logits = torch.randn(300, 8, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    sharp = gumbel_softmax(logits, 0.05, generator=g).max(-1).values.mean()
    smooth = gumbel_softmax(logits, 10.0, generator=g).max(-1).values.mean()
    assert sharp > 0.9 and smooth < 0.3
    hard = gumbel_softmax(logits, 1.0, hard=True, generator=torch.Generator().manual_seed(2))
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(300))
    soft = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))  # the same noise
    (hard * torch.arange(8.0)).sum().backward()  # gradient of the soft sample flows through
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_softmax_straight_through_gradient_is_the_soft_samples():
    logits = torch.randn(50, 6, requires_grad=True)
    w = torch.randn(6)
    hard = gumbel_softmax(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(3))
    (grad_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    soft = gumbel_softmax(logits, 0.5, generator=torch.Generator().manual_seed(3))
    (grad_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft)


def test_nearest_code_matches_brute_force():
    z, e = torch.randn(40, 5), torch.randn(12, 5)
    brute = torch.cdist(z, e).argmin(1)
    assert torch.equal(nearest_code(z, e), brute)
    assert nearest_code(z.view(4, 10, 5), e).shape == (4, 10)
    with pytest.raises(ValueError, match="codebook width 5"):
        nearest_code(torch.randn(3, 4), e)


def test_kl_to_uniform_is_torch_distributions_categorical_kl():
    """KL(q ‖ U(K)) of every cell equals torch.distributions' KL between two Categoricals."""
    logits = 3 * torch.randn(2, 16, 4, 5, generator=torch.Generator().manual_seed(0))
    theirs = kl_divergence(
        Categorical(logits=logits.movedim(1, -1)), Categorical(probs=torch.full((16,), 1 / 16))
    )  # (2, 4, 5)
    ours = kl_to_uniform(logits)  # K along dim 1, as the dVAE's encoder gives it
    assert ours.shape == (2, 4, 5)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(kl_to_uniform(logits.movedim(1, -1), dim=-1), theirs)
    q = logits.softmax(1)  # = log K − H(q)
    torch.testing.assert_close(ours, math.log(16) + (q * q.log()).sum(1))


def test_kl_to_uniform_lies_between_0_and_log_k():
    flat = kl_to_uniform(torch.full((3, 10), 2.5), dim=-1)  # q uniform: the prior itself
    torch.testing.assert_close(flat, torch.zeros(3))
    sure = kl_to_uniform(torch.tensor([[50.0, 0, 0, 0, 0, 0, 0, 0]]), dim=-1)  # q one-hot
    torch.testing.assert_close(sure, torch.tensor([math.log(8)]))
    kl = kl_to_uniform(10 * torch.randn(500, 32), dim=-1)
    assert kl.min() >= -1e-6 and kl.max() <= math.log(32) + 1e-6
    assert kl_to_uniform(torch.randn(2, 5, dtype=torch.float64), dim=-1).dtype == torch.float64
    with pytest.raises(TypeError, match="floating"):
        kl_to_uniform(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dim"):
        kl_to_uniform(torch.zeros(2, 3), dim=2)


# ---- the dVAE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_dvae_shapes_and_loss_terms(images, quantizer):
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(codebook_size=16, code_dim=8, hidden=8, quantizer=quantizer))
    codes = model.encode(images)
    assert codes.shape == (6, 8, 8) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    out = model.decode(codes)
    assert out.shape == (6, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(model(images), out)  # forward = decode(encode(x))
    terms = model.loss(images, tau=0.5, beta=0.1, diversity=0.1)
    assert terms["loss"].ndim == 0 and torch.isfinite(terms["loss"])
    assert 1 <= terms["perplexity"] <= 16
    if quantizer != "vq":
        assert terms["kl"] >= -1e-6  # KL(q ‖ uniform) ≥ 0
        # decoding hard one-hot assignments equals decoding the codes
        onehot = F.one_hot(codes, 16).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(model.decode_soft(onehot).clamp(0, 1), out)
        assert torch.equal(model.encode_logits(images).argmax(1), codes)


def test_gumbel_loss_is_the_negative_elbo(images):
    """loss = ‖x − D(Σ y e)‖² + β·KL(q ‖ U) + diversity·KL(q̄ ‖ U), each term as written."""
    torch.manual_seed(0)
    model = DVAE(TINY_DVAE)
    torch.manual_seed(1)
    terms = model.loss(images, tau=0.5, beta=0.3, diversity=0.2)
    q = model.encode_logits(images).softmax(1)  # (B, K, h, w)
    kl = (q * (q * 16).log()).sum(1).mean()
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["kl"], kl_to_uniform(model.encode_logits(images)).mean())
    q_bar = q.mean((0, 2, 3))
    kl_bar = (q_bar * (q_bar * 16).log()).sum()
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + 0.3 * kl + 0.2 * kl_bar)


def test_vq_encode_is_nearest_codebook_vector(images):
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(codebook_size=16, code_dim=8, hidden=8, quantizer="vq"))
    feats = model._features(model._pixels(images)).permute(0, 2, 3, 1)  # (B, h, w, D)
    dist = ((feats[..., None, :] - model.codebook.weight) ** 2).sum(-1)  # (B, h, w, K)
    assert torch.equal(model.encode(images), dist.argmin(-1))
    with pytest.raises(ValueError, match="no logits"):
        model.encode_logits(images)


def test_codes_are_position_aware_with_coords():
    """With coordinate channels two identical background cells can get different codes."""
    torch.manual_seed(0)
    blank = torch.full((1, 3, 32, 32), 22, dtype=torch.uint8)
    feats = DVAE(TINY_DVAE).encode_logits(blank)[0]  # (K, 8, 8)
    assert (feats[:, 3, 3] - feats[:, 3, 4]).abs().max() > 1e-2
    plain = DVAE(DVAEConfig(codebook_size=16, code_dim=8, hidden=8, coords=False))
    inner = plain.encode_logits(blank)[0][:, 2:6, 2:6]  # away from the zero padding
    torch.testing.assert_close(inner[:, 0, 0], inner[:, 1, 1], atol=1e-3, rtol=0)


def test_uint8_and_float_images_give_the_same_codes(images):
    model = DVAE(TINY_DVAE)
    assert torch.equal(model.encode(images), model.encode(images.float() / 255))


def test_stage_one_is_still_importable_from_dalle():
    """Last term's import path, `from minimodels.dalle import DVAE, ...`, still works."""
    assert dalle.DVAE is DVAE and dalle.DVAEConfig is DVAEConfig
    assert dalle.gumbel_softmax is gumbel_softmax and dalle.nearest_code is nearest_code


# ---- the entry checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codes, error, match",
    [
        (torch.full((1, 8, 8), 16), ValueError, r"\[0, 16\)"),
        (torch.full((1, 8, 8), -1), ValueError, r"\[0, 16\)"),
        (torch.zeros(1, 4, 4, dtype=torch.long), ValueError, r"\(B, 8, 8\)"),
        (torch.zeros(8, 8, dtype=torch.long), ValueError, r"\(B, 8, 8\)"),
        (torch.zeros(1, 8, 8), TypeError, "integer"),
        (torch.zeros(1, 8, 8, dtype=torch.bool), TypeError, "real-valued"),
        ([[0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_codes_raise(codes, error, match):
    with pytest.raises(error, match=match):
        DVAE(TINY_DVAE).decode(codes)


def test_bad_images_config_and_tau_raise():
    model = DVAE(TINY_DVAE)
    with pytest.raises(ValueError, match="32×32"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="channels-last"):
        model.encode(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.loss(torch.full((1, 3, 32, 32), -1.0))
    with pytest.raises(ValueError, match="quantizer"):
        DVAE(DVAEConfig(quantizer="kmeans"))
    with pytest.raises(ValueError, match="downsample"):
        DVAE(DVAEConfig(downsample=3))
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax(torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="dim"):
        gumbel_softmax(torch.zeros(3, 4), dim=2)
    with pytest.raises(TypeError, match="floating"):
        gumbel_softmax(torch.zeros(3, dtype=torch.long))
