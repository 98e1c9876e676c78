"""Frozen: a visual prefix in front of a frozen tiny GPT; prefix_forward, shared with BLIP-2."""

import copy

import pytest
import tiny
import torch

from minimodels.frozen import Frozen, FrozenConfig, prefix_forward


def toy_text(n=4):
    """A prompt of three words and an answer word; only the answer carries a loss."""
    ids = torch.tensor([[5, 10, 11, 30]]).repeat(n, 1)
    labels = ids.clone()
    labels[:, :-1] = -100
    return ids, labels


def test_frozen_prefix_forward_matches_token_embeddings():
    lm = tiny.lm()
    ids = torch.tensor([[5, 9, 12, 13, 14, 6]])
    prefix = lm.get_input_embeddings()(ids[:, :2])  # a "visual prefix" made of real words
    out = prefix_forward(lm, prefix, ids[:, 2:], labels=ids[:, 2:])
    labels = ids.clone()
    labels[:, :2] = -100
    ref = lm(input_ids=ids, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.loss, ref.loss)


def test_frozen_trains_the_vision_encoder_only():
    lm = tiny.lm()
    reference = copy.deepcopy(lm)
    model = Frozen(lm, FrozenConfig(image_size=16, channels=(8, 8, 16), lm_dim=32))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vision_encoder"}
    images = torch.rand(4, 3, 16, 16)
    ids, labels = toy_text(4)
    out = model(images, ids, labels=labels)
    assert out.logits.shape == (4, 2 + 4, lm.config.vocab_size)
    out.loss.backward()
    assert model.vision_encoder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.lm.parameters(), reference.parameters()))


def test_uint8_and_unit_float_images_give_the_same_prefix():
    model = Frozen(tiny.lm(), FrozenConfig(image_size=16, channels=(8, 8, 8), lm_dim=32))
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    prefix = model.vision_encoder(images)
    assert prefix.shape == (3, 2, 32)  # (B, k, C)
    torch.testing.assert_close(model.vision_encoder(images.float() / 255), prefix)


def test_bad_inputs():
    ids = torch.tensor([[5, 9]])
    frozen = Frozen(tiny.lm(), FrozenConfig(image_size=16, channels=(8, 8, 8), lm_dim=32))
    with pytest.raises(ValueError, match="one row per image \\(2\\)"):
        frozen(torch.rand(2, 3, 16, 16), ids)
    with pytest.raises(ValueError, match="channels"):
        frozen(torch.rand(1, 16, 16, 3), ids)  # channels-last
    with pytest.raises(ValueError, match="16×16"):
        frozen(torch.rand(1, 3, 32, 32), ids)
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        frozen(torch.rand(1, 3, 16, 16), ids, labels=torch.tensor([[5]]))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        frozen(torch.rand(1, 3, 16, 16), ids.float())
    with pytest.raises(ValueError, match="config.lm_dim must equal the LM's width 32"):
        Frozen(tiny.lm(), FrozenConfig(lm_dim=64))
    with pytest.raises(TypeError, match="lm must be a Module"):
        Frozen("gpt")
