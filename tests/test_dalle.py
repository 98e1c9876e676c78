"""The DALL-E prior (minimodels/dalle.py): the stream, causality, the weighted loss, the KV cache
against the full forward, the entry checks, a save/load round trip."""

import pytest
import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, save_model
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.text import Tokenizer

TINY_PRIOR = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=1, heads=2)
TWO_LAYERS = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=2, heads=2)
V = TINY_PRIOR.text_vocab_size + 16  # text ids, then the 16 image codes


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return DALLEPrior(TINY_PRIOR).eval()


def test_sequence_is_text_soi_then_offset_codes(prior):
    codes = torch.randint(0, 16, (2, 8, 8))
    tokens = prior.sequence(["a red circle", "a blue square on the left"], codes)
    assert tokens.shape == (2, TINY_PRIOR.seq_len) and tokens.dtype == torch.long
    assert (tokens[:, TINY_PRIOR.text_length] == Tokenizer().soi_token_id).all()
    assert torch.equal(tokens[:, -64:] - TINY_PRIOR.text_vocab_size, codes.view(2, -1))
    assert torch.equal(tokens[:, : TINY_PRIOR.text_length], prior.text_tokens(["a red circle",
                       "a blue square on the left"]))  # fmt: skip


def test_prior_is_causal_and_its_loss_weights_text(prior):
    codes = torch.randint(0, 16, (2, 8, 8))
    tokens = prior.sequence(["a red circle", "a blue square on the left"], codes)
    logits = prior(tokens)
    assert logits.shape == (2, TINY_PRIOR.seq_len, prior.vocab_size)
    changed = tokens.clone()
    changed[:, 40:] = TINY_PRIOR.text_vocab_size  # change the future: the past must not see it
    torch.testing.assert_close(prior(changed)[:, :40], logits[:, :40])
    terms = prior.loss(tokens)
    torch.testing.assert_close(terms["loss"], terms["image"] + terms["text"] / 8)
    # the image term is the cross-entropy of predicting each of the 64 codes
    ce = F.cross_entropy(logits[:, TINY_PRIOR.text_length : -1].transpose(1, 2), tokens[:, 17:])
    torch.testing.assert_close(terms["image"], ce)


@pytest.mark.parametrize("config", [TINY_PRIOR, TWO_LAYERS])
def test_kv_cache_gives_the_full_forward_logits(config):
    torch.manual_seed(0)
    prior = DALLEPrior(config).eval()
    tokens = prior.sequence(["a red circle", "a cyan cross"], torch.randint(0, 16, (2, 8, 8)))
    full = prior(tokens)  # (2, seq_len, V)
    cache: list = []
    with torch.no_grad():
        parts = [prior.forward_cached(tokens[:, :17], cache)]  # the prompt at once
        parts += [prior.forward_cached(tokens[:, t : t + 1], cache) for t in range(17, 40)]
        parts.append(prior.forward_cached(tokens[:, 40:], cache))  # several new tokens
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    assert len(cache) == config.layers and cache[0][0].shape[2] == config.seq_len
    with pytest.raises(ValueError, match="exceed"):
        prior.forward_cached(tokens[:, :1], cache)


def test_save_and_load_round_trip(prior, tmp_path):
    save_model(prior, tmp_path / "prior")
    again = load_model(DALLEPrior, tmp_path / "prior", device="cpu")
    tokens = prior.sequence(["a red circle"], torch.zeros(1, 8, 8, dtype=torch.long))
    torch.testing.assert_close(again(tokens), prior(tokens))


@pytest.mark.parametrize(
    "tokens, error, match",
    [
        (torch.zeros(1, TINY_PRIOR.seq_len + 1, dtype=torch.long), ValueError, "max_length"),
        (torch.full((1, 5), V), ValueError, f"vocab_size={V}"),
        (torch.full((1, 5), -1), ValueError, f"vocab_size={V}"),
        (torch.zeros(1, 5), TypeError, "integer"),
        (torch.zeros(5, dtype=torch.long), ValueError, "dimensions"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "empty"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_tokens_raise(prior, tokens, error, match):
    with pytest.raises(error, match=match):
        prior(tokens)


def test_bad_sequence_arguments_raise(prior):
    with pytest.raises(ValueError, match="one grid per prompt"):
        prior.sequence(["a red circle", "a cyan cross"], torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        prior.sequence(["a red circle"], torch.zeros(1, 8, 8))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="divisible"):
        DALLEPrior(DALLEConfig(dim=30, heads=4))
