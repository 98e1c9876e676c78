"""Flamingo (resampler, tanh-gated cross-attention) around a tiny GPT and the shipped one."""

import copy

import pytest
import tiny
import torch

import minimodels
from minimodels.flamingo import (
    Flamingo,
    FlamingoConfig,
    FlamingoLayer,
    GatedCrossAttentionDense,
    PerceiverResampler,
)
from minimodels.gpt import TOKENIZER


def toy_task(n=64, seed=0):
    """Image features whose mean says which of two words follows the prompt."""
    g = torch.Generator().manual_seed(seed)
    answer = torch.randint(0, 2, (n,), generator=g)
    feats = torch.randn(n, 5, 16, generator=g) + (2 * answer - 1)[:, None, None].float()
    ids = torch.tensor([[5, 10, 11, 30]]).repeat(n, 1)
    ids[:, -1] = torch.where(answer == 1, 30, 31)
    labels = ids.clone()
    labels[:, :-1] = -100  # train the answer only
    return feats, ids, labels


def test_resampler_any_number_of_features_to_fixed_latents():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=16, depth=2, num_latents=6, heads=4)
    for n in (1, 7, 64):
        assert resampler(torch.randn(3, n, 16)).shape == (3, 6, 16)
    # No positions inside: the latents do not depend on the order of the features
    x = torch.randn(2, 9, 16)
    perm = torch.randperm(9)
    torch.testing.assert_close(resampler(x[:, perm]), resampler(x), rtol=1e-5, atol=1e-5)
    # ... but they do depend on their content
    assert not torch.allclose(resampler(torch.randn_like(x)), resampler(x), atol=1e-3)


def test_gated_cross_attention_is_identity_at_init_then_not():
    torch.manual_seed(0)
    layer = GatedCrossAttentionDense(dim=32, dim_visual=16, heads=4)
    x, media = torch.randn(2, 5, 32), torch.randn(2, 3, 16)
    assert torch.equal(layer(x, media), x)  # tanh(0) = 0: exactly the identity
    with torch.no_grad():
        layer.attn_gate.fill_(0.5)
    expected = x + torch.tanh(torch.tensor(0.5)) * layer.cross_attn(layer.norm(x), context=media)
    torch.testing.assert_close(layer(x, media), expected)


def test_flamingo_leaves_lm_outputs_unchanged_at_init():
    lm = tiny.lm()
    reference = copy.deepcopy(lm)
    model = Flamingo(lm, FlamingoConfig(vision_dim=16, lm_dim=32, num_latents=4))
    assert sum(isinstance(b, FlamingoLayer) for b in model.lm.blocks) == 2
    feats, ids, labels = toy_task(8)
    out = model(feats, ids, labels=labels)
    ref = reference(input_ids=ids, labels=labels)
    assert torch.equal(out.logits, ref.logits)
    assert torch.equal(out.loss, ref.loss)
    assert set(model.gates().values()) == {0.0}


def test_flamingo_trains_gates_and_adapters_only_and_outputs_change():
    lm = tiny.lm()
    reference = copy.deepcopy(lm)
    model = Flamingo(lm, FlamingoConfig(vision_dim=16, lm_dim=32, num_latents=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("perceiver" in n or "gated_cross_attn_layer" in n for n in trainable)
    feats, ids, labels = toy_task(64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(60):
        loss = model(feats, ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # a random tiny LM spreads its probability thinly (loss ≈ log V), so look at the two answers
    assert losses[-1] < losses[0] - 0.3, losses[::10]
    out = model.eval()(feats, ids).logits
    says_30 = out[:, -2, 30] > out[:, -2, 31]
    accuracy = (says_30 == (ids[:, -1] == 30)).float().mean().item()
    assert accuracy >= 0.9, accuracy
    assert any(abs(g) > 1e-2 for g in model.gates().values())
    assert not torch.allclose(out, reference(input_ids=ids).logits, atol=1e-3)
    # the frozen LM's own weights did not move
    for (name, p), (_, p0) in zip(
        ((n, p) for n, p in model.lm.named_parameters() if "gated_cross_attn_layer" not in n),
        reference.named_parameters(),
    ):
        assert torch.equal(p, p0), name
    # after a forward pass the LM is text-only again: no image left behind
    torch.testing.assert_close(model.lm(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_bad_inputs():
    lm = tiny.lm()
    model = Flamingo(lm, FlamingoConfig(vision_dim=16, lm_dim=32))
    ids = torch.tensor([[5, 9]])
    with pytest.raises(ValueError, match="image_features must be \\(B, N, 16\\)"):
        model(torch.randn(1, 4, 8), ids)
    with pytest.raises(ValueError, match="image_features must have 3 dimensions"):
        model(torch.randn(4, 16), ids)
    with pytest.raises(ValueError, match="one row per image"):
        model(torch.randn(2, 4, 16), ids)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(torch.randn(1, 4, 16), ids.float())
    with pytest.raises(ValueError, match="lm_dim must equal the LM's width 32"):
        Flamingo(tiny.lm(), FlamingoConfig(vision_dim=16, lm_dim=64))
    with pytest.raises(ValueError, match="decoder_layers_attr_name='layers'"):
        Flamingo(tiny.lm(), decoder_layers_attr_name="layers")
    with pytest.raises(TypeError, match="get_input_embeddings"):
        Flamingo(torch.nn.Linear(3, 3))


def test_flamingo_around_the_shipped_gpt_is_the_gpt_at_init():
    lm = minimodels.pretrained("gpt")
    reference = copy.deepcopy(lm)
    model = Flamingo(lm, FlamingoConfig(vision_dim=64, lm_dim=lm.config.n_embd))
    texts = ["<bos> what color is the circle? red <eos>", "<bos> a red square <eos>"]
    batch = TOKENIZER(texts, add_special_tokens=False, padding=True)
    feats = torch.randn(2, 16, 64)
    out = model(feats, batch["input_ids"], batch["attention_mask"], labels=batch["input_ids"])
    ref = reference(**batch, labels=batch["input_ids"])
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
    with torch.no_grad():
        model.flamingo_layers()[0].gated_cross_attn_layer.attn_gate.fill_(1.0)
    assert not torch.allclose(model(feats, batch["input_ids"]).logits[0], ref.logits[0])
