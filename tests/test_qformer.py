"""The Q-Former: fixed number of queries, reads the image, trains through a frozen LM."""

import copy

import pytest
import tiny
import torch

from minimodels.qformer import Blip2, QFormer, QFormerConfig


def config(**kw):
    args = dict(encoder_hidden_size=16, hidden_size=24, num_query_tokens=3, lm_dim=32)
    return QFormerConfig(**{**args, **kw})


def test_queries_read_the_image_whatever_its_size():
    torch.manual_seed(0)
    qformer = QFormer(config())
    for n in (1, 10, 64):
        z, maps = qformer(torch.randn(2, n, 16), return_attention=True)
        assert z.shape == (2, 3, 24)
        assert len(maps) == 2 and maps[0].shape == (2, 4, 3, n)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 3))
    x = torch.randn(2, 10, 16)
    assert not torch.allclose(qformer(x), qformer(torch.randn_like(x)), atol=1e-3)
    # two images in a batch do not influence each other
    torch.testing.assert_close(qformer(x)[:1], qformer(x[:1]), rtol=1e-5, atol=1e-6)


def test_blip2_trains_only_the_bridge_and_learns_a_toy_task():
    lm = tiny.lm()
    reference = copy.deepcopy(lm)
    model = Blip2(lm, config())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "language_projection"}
    g = torch.Generator().manual_seed(0)
    answer = torch.randint(0, 2, (64,), generator=g)
    feats = torch.randn(64, 6, 16, generator=g)
    feats[:, 2, :4] += 3 * (2 * answer[:, None] - 1)  # one feature carries the answer
    ids = torch.tensor([[5, 10, 11, 0]]).repeat(64, 1)
    ids[:, -1] = torch.where(answer == 1, 30, 31)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    out = model(feats, ids, labels=labels)
    assert out.logits.shape == (64, 3 + 4, lm.config.vocab_size)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    model.train()
    for _ in range(60):
        loss = model(feats, ids, labels=labels).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first  # a random tiny LM keeps its loss near log V: see the accuracy
    logits = model.eval()(feats, ids).logits[:, 3 + 2]  # text position 2 predicts the answer
    accuracy = ((logits[:, 30] > logits[:, 31]) == (answer == 1)).float().mean().item()
    assert accuracy >= 0.9, accuracy
    assert all(torch.equal(a, b) for a, b in zip(model.lm.parameters(), reference.parameters()))


def test_bad_inputs():
    qformer = QFormer(config())
    with pytest.raises(ValueError, match="width 16"):
        qformer(torch.randn(2, 5, 8))
    with pytest.raises(TypeError, match="float"):
        qformer(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="3 dimensions"):
        qformer(torch.randn(5, 16))
    with pytest.raises(ValueError, match="lm_dim must equal the LM's width 32"):
        Blip2(tiny.lm(), config(lm_dim=64))
    model = Blip2(tiny.lm(), config())
    with pytest.raises(ValueError, match="one row per image"):
        model(torch.randn(2, 5, 16), torch.tensor([[5, 6]]))
