"""ViLT (the model file): one stream over words and patches, checks at the entry point.
Training and the shipped weights: tests/test_recipes_vilt.py."""

import pytest
import tiny
import torch

from minimodels.checkpoint import load_model, save_model
from minimodels.vilt import ViLT, ViLTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ViLT(tiny.VILT).eval()


def test_vilt_single_stream(model, tok, test_data):
    images, scenes = test_data
    toks = tok([s["caption"] for s in scenes])
    out = model(toks, images, output_attentions=True)
    L, N = toks["input_ids"].shape[1], (32 // 8) ** 2
    assert out.hidden.shape == (4, L + N, 32) and out.itm_logits.shape == (4, 2)
    assert out.mlm_logits.shape == (4, L, len(tok))
    assert out.attentions[0].shape == (4, 4, L + N, L + N)
    # one stream: words attend to patches in the very first layer
    assert out.attentions[0][:, :, :L, L:].sum() > 0
    # padding words get no attention
    pad = toks["attention_mask"] == 0
    assert (out.attentions[0][:, :, :, :L] * pad[:, None, None, :]).abs().max() == 0
    torch.testing.assert_close(out.itm_score(), out.itm_logits[:, 1] - out.itm_logits[:, 0])
    torch.testing.assert_close(out.pooled, torch.tanh(model.pooler(out.hidden[:, 0])))


def test_modality_embedding_tells_words_from_patches(model, tok, test_data):
    """z = [words; patches] + modality: the first layer's input is exactly that sum."""
    images, scenes = test_data
    toks = tok([scenes[0]["caption"]])
    ids, L = toks["input_ids"], toks["input_ids"].shape[1]
    words = model.token_embedding(ids) + model.position_embedding[:L]
    patches = model.patch_embed(images[:1].float() / 255)
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))
    model(toks, images[:1])
    hook.remove()
    torch.testing.assert_close(seen["z"][:, :L], words + model.modality_embedding.weight[0])
    torch.testing.assert_close(seen["z"][:, L:], patches + model.modality_embedding.weight[1])


def test_padding_words_change_nothing(model, tok, test_data):
    images, scenes = test_data
    alone = model(tok([scenes[0]["caption"]]), images[:1])
    padded = tok([scenes[0]["caption"], "a red circle " * 8])  # row 0 padded
    out = model({k: v[:1] for k, v in padded.items()}, images[:1])
    torch.testing.assert_close(out.itm_logits, alone.itm_logits, rtol=1e-5, atol=1e-5)


def test_uint8_and_float_images_agree(model, tok, test_data):
    images, scenes = test_data
    toks = tok([s["caption"] for s in scenes])
    torch.testing.assert_close(model(toks, images).itm_logits, model(toks, images / 255).itm_logits)


def test_save_and_load_round_trip(model, tok, test_data, tmp_path):
    images, scenes = test_data
    toks = tok([s["caption"] for s in scenes])
    save_model(model, tmp_path / "vilt")
    again = load_model(ViLT, tmp_path / "vilt", device="cpu")
    torch.testing.assert_close(again(toks, images).itm_logits, model(toks, images).itm_logits)


def test_bad_input_raises(model, tok, test_data):
    images, scenes = test_data
    toks = tok([s["caption"] for s in scenes])
    with pytest.raises(ValueError, match="batch size"):
        model(toks, images[:2])
    with pytest.raises(ValueError, match="32×32"):
        model(toks, images[..., :28, :28])
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[2, tiny.VILT.vocab_size]] * 4), images)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(toks["input_ids"], images, attention_mask=toks["attention_mask"][:, :-1])


def test_bad_config_raises():
    with pytest.raises(ValueError, match="image_size=32 must be divisible by patch_size=5"):
        ViLT(ViLTConfig(patch_size=5))
    with pytest.raises(ValueError, match="width=30 must be divisible by heads=4"):
        ViLT(ViLTConfig(width=30, heads=4))
