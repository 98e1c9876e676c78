"""SigLIP's loss against open_clip's arithmetic, the false-negative-aware InfoNCE, the captioner's
likelihood scoring, and the curation helpers of notebook 02b."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minimodels.captioner import Captioner, CaptionerConfig
from minimodels.clip import clip_loss
from minimodels.contrastive import (
    SIGLIP_LOGIT_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    caption_groups,
    clip_loss_multi_positive,
    false_negatives,
    siglip_loss,
)
from minimodels.recipes.contrastive import (
    Pairs,
    curate,
    duplicates_per_batch,
    noisy_captions,
    train_dual,
)


def unit(n, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, e, generator=g), dim=-1),
            F.normalize(torch.randn(n, e, generator=g), dim=-1))  # fmt: skip


def open_clip_loss_module():
    """open_clip's src/open_clip/loss.py, loaded on its own: the package's __init__ imports
    torchvision, which the course does not install; loss.py needs torch only."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed (pip install open_clip_torch --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_loss_only", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- SigLIP


@pytest.mark.parametrize("n", [1, 5, 16])
def test_siglip_loss_equals_open_clip_siglip_loss(n):
    loss_module = open_clip_loss_module()
    u, v = unit(n, seed=n)
    scale, bias = torch.tensor(7.3), torch.tensor(-4.2)
    theirs = loss_module.SigLipLoss()(u, v, scale, bias)
    assert torch.allclose(siglip_loss(u, v, scale, bias), theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_siglip_loss_by_hand(n):
    """An independent re-derivation: −(1/n) Σ_ij log σ(z_ij s_ij) over all n² pairs, with
    log σ(x) = −log(1 + e^{−x}), in float64, one pair at a time."""
    u, v = unit(n, seed=3)
    scale, bias = 10.0, -10.0
    total = 0.0
    for i in range(n):
        for j in range(n):
            s = scale * float(u[i] @ v[j]) + bias
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * s))  # −log σ(z s)
    assert math.isclose(siglip_loss(u, v, scale, bias).item(), total / n, rel_tol=1e-5)


def test_siglip_initialisation_and_gradients():
    assert math.isclose(math.exp(SIGLIP_LOGIT_SCALE_INIT), 10.0) and SIGLIP_LOGIT_BIAS_INIT == -10
    u, v = unit(6)
    t = torch.tensor(SIGLIP_LOGIT_SCALE_INIT, requires_grad=True)
    b = torch.tensor(SIGLIP_LOGIT_BIAS_INIT, requires_grad=True)
    siglip_loss(u, v, t.exp(), b).backward()
    # at b = −10 every pair looks like a non-match: the positives pull b up
    assert b.grad < 0 and torch.isfinite(t.grad)


def test_siglip_loss_refuses_wrong_inputs():
    u, v = unit(4)
    with pytest.raises(ValueError, match="same n and E"):
        siglip_loss(u, v[:3], 10.0, -10.0)
    with pytest.raises(ValueError, match="float tensor"):
        siglip_loss(u[0], v[0], 10.0, -10.0)


# ---------------------------------------------------------------------------- false negatives


def test_caption_groups_and_false_negatives():
    groups = caption_groups(["a red circle", "a blue cross", "a red circle", "a red circle"])
    assert groups.tolist() == [0, 1, 0, 0]
    assert false_negatives(groups) == 6  # three copies: 3·2 ordered pairs
    assert false_negatives(caption_groups(["a", "b", "c"])) == 0
    with pytest.raises(TypeError):
        caption_groups("a red circle")


@pytest.mark.parametrize("mode", ["mask", "spread"])
def test_multi_positive_loss_is_clip_loss_without_duplicates(mode):
    u, v = unit(7, seed=2)
    groups = torch.arange(7)
    ours = clip_loss_multi_positive(u, v, 14.3, groups, mode=mode)
    assert torch.allclose(ours, clip_loss(u, v, 14.3), atol=1e-6)


def test_multi_positive_loss_with_duplicates():
    u, v = unit(4, seed=5)
    v[2] = v[0]  # captions 0 and 2 are the same text, so their embeddings are equal
    groups = torch.tensor([0, 1, 0, 2])
    s = 10.0 * u @ v.T
    # mask: row 0 leaves column 2 out of its softmax, row 2 leaves column 0 out
    row0 = -(s[0, 0] - torch.logsumexp(s[0, [0, 1, 3]], 0))
    masked = clip_loss_multi_positive(u, v, 10.0, groups, mode="mask")
    full_rows = F.cross_entropy(s, torch.arange(4), reduction="none")
    assert row0 < full_rows[0]  # a false negative taken out can only lower the loss
    assert masked < clip_loss(u, v, 10.0)
    # spread: row 0's target is ½ on columns 0 and 2
    spread = clip_loss_multi_positive(u, v, 10.0, groups, mode="spread")
    target = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])
    by_hand = (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2
    assert torch.allclose(spread, by_hand, atol=1e-6)


def test_spreading_over_identical_columns_is_clip_loss():
    u, v = unit(6, seed=1)
    v[3] = v[5] = v[1]  # one caption three times: one text, one embedding
    groups = torch.tensor([0, 1, 2, 1, 4, 1])
    spread = clip_loss_multi_positive(u, v, 10.0, groups, mode="spread")
    assert torch.allclose(spread, clip_loss(u, v, 10.0), atol=1e-6)
    assert clip_loss_multi_positive(u, v, 10.0, groups, mode="mask") < spread


def test_multi_positive_loss_refuses_wrong_inputs():
    u, v = unit(4)
    with pytest.raises(ValueError, match="groups"):
        clip_loss_multi_positive(u, v, 10.0, torch.arange(3))
    with pytest.raises(ValueError, match="groups"):
        clip_loss_multi_positive(u, v, 10.0, torch.zeros(4))
    with pytest.raises(ValueError, match="mode"):
        clip_loss_multi_positive(u, v, 10.0, torch.arange(4), mode="drop")


# ---------------------------------------------------------------------------- captioner

TINY = CaptionerConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1,
                       vision_heads=2, text_width=16, text_layers=1, text_heads=2)  # fmt: skip


def test_captioner_scores_are_the_log_likelihood_of_each_caption():
    torch.manual_seed(0)
    model = Captioner(TINY).eval()
    images = torch.rand(3, 3, 16, 16)
    captions = ["a red circle", "there is a large blue cross on the left"]
    scores = model.score_captions(images, captions, batch_size=2)  # (3, 2)
    assert scores.shape == (3, 2) and (scores < 0).all()
    for j, caption in enumerate(captions):  # the same from forward's loss: mean · tokens
        batch = model.encode_captions([caption] * 3)
        with torch.no_grad():
            logits = model(images, **batch).logits
        logp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])
        assert torch.allclose(scores[:, j], logp[..., 0].sum(1), atol=1e-5)
    # the image matters: the decoder cross-attends to it
    assert not torch.allclose(scores[0], scores[1])


def test_captioner_trains_and_refuses_wrong_inputs():
    torch.manual_seed(0)
    model = Captioner(TINY)
    images = torch.rand(2, 3, 16, 16)
    out = model(images, **model.encode_captions(["a red circle", "a blue square"]))
    assert out.logits.shape[:2] == (2, 5) and out.loss.ndim == 0
    out.loss.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0  # gradient reaches the image
    with pytest.raises(ValueError, match="images"):
        model(images[:1], **model.encode_captions(["a red circle", "a blue square"]))
    with pytest.raises(ValueError):
        model.score_captions(torch.rand(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="divisible"):
        Captioner(CaptionerConfig(image_size=30, patch_size=8))


# ---------------------------------------------------------------------------- recipe helpers


def toy_pairs(n=40):
    captions = [f"a {c} circle" for c in ("red", "blue", "green", "yellow")] * (n // 4)
    return Pairs(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), captions,
                 torch.ones(n, dtype=torch.bool))  # fmt: skip


def test_noisy_captions_and_curation():
    pairs = toy_pairs(400)
    pairs.captions = [f"{c} {i}" for i, c in enumerate(pairs.captions)]  # all distinct
    noisy = noisy_captions(pairs, 0.4, seed=1)
    assert noisy.clean.sum().item() == 240 and noisy.captions != pairs.captions
    assert all(c == p for c, p, k in zip(noisy.captions, pairs.captions, noisy.clean) if k)
    scores = noisy.clean.float() + 0.01 * torch.rand(400)  # a perfect scorer
    kept, report = curate(noisy, scores, keep=0.5)
    assert len(kept) == 200 and report["precision"] == 1.0
    assert report["recall"] == round(200 / 240, 4)
    with pytest.raises(ValueError, match="share"):
        noisy_captions(pairs, 1.5)
    with pytest.raises(ValueError, match="keep"):
        curate(noisy, scores, keep=0)
    with pytest.raises(ValueError, match="scores"):
        curate(noisy, scores[:3], keep=0.5)


def test_duplicates_per_batch_counts_repeated_captions():
    per_batch, rows = duplicates_per_batch(toy_pairs(40), batch_size=8, batches=3)
    assert per_batch >= 8 and 0.5 <= rows <= 1  # 4 distinct captions in 8 rows must repeat


def test_train_dual_refuses_wrong_arguments():
    with pytest.raises(ValueError, match="objective"):
        train_dual(toy_pairs(), objective="infonce")
    with pytest.raises(ValueError, match="false_negative"):
        train_dual(toy_pairs(), false_negative="drop")
    with pytest.raises(ValueError, match="batch_size"):
        train_dual(toy_pairs(), batch_size=64, steps=1)
