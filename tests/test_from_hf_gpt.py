"""GPT.from_hf: transformers' GPT-2 weights in our GPT give transformers' logits and greedy
continuations, with and without padding; what it cannot load is refused by name."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minimodels.gpt import GPT, HF_GPT2_MODULES  # noqa: E402

TOL = 1e-4  # max |ours − theirs| of the logits


def tiny_gpt2(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4, **overrides
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def pair():
    hf = tiny_gpt2()
    return hf, GPT.from_hf(hf)


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_config_and_key_map(pair):
    hf, ours = pair
    c = ours.config
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (101, 32, 32, 2, 4)
    assert c.activation == "gelu_tanh" and c.layer_norm_epsilon == 1e-5
    assert ours.blocks[0].mlp[0].out_features == 4 * 32  # n_inner=None -> 4C
    assert not ours.training  # the mode of the model given
    # every parameter of theirs is named in the map
    names = {k.rsplit(".", 1)[0] for k, _ in hf.named_parameters()}
    mapped = {m.format(i=i) for m in HF_GPT2_MODULES for i in range(2)}
    assert names <= mapped


def test_logits_equal_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, 101, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(ids).logits
    assert max_diff(ours(ids).logits, theirs) < TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_equal_transformers_with_padding(pair, side):
    hf, ours = pair
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    pad = slice(0, 5) if side == "left" else slice(7, 12)
    mask[1, pad] = 0
    # our positions count real tokens; transformers' forward needs them given (its generate
    # makes the same ones)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=position_ids).logits
    logits = ours(ids, attention_mask=mask).logits
    real = mask.bool()  # padding positions' own logits are not compared
    assert max_diff(logits[real], theirs[real]) < TOL
    # and a padded row equals the same tokens alone
    alone = ours(ids[1:, real[1]]).logits[0]
    assert max_diff(logits[1][real[1]], alone) < TOL


def test_greedy_generate_equals_transformers(pair):
    hf, ours = pair
    ids = torch.randint(1, 101, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # row 1 is left-padded
    # the tiny config's eos (50256) lies outside the vocabulary: no row ends early
    theirs = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                         pad_token_id=0)  # fmt: skip
    mine = ours.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None,
                         pad_token_id=0)  # fmt: skip
    assert torch.equal(mine, theirs)
    # with an eos that row 0 writes: it ends there and is padded after, in both
    eos = int(theirs[0, 6 + 3])
    theirs = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                         pad_token_id=0, eos_token_id=eos)  # fmt: skip
    mine = ours.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos,
                         pad_token_id=0)  # fmt: skip
    assert torch.equal(mine, theirs)


def test_n_inner_and_exact_gelu():
    hf = tiny_gpt2(n_inner=48, activation_function="gelu", layer_norm_epsilon=1e-6)
    ours = GPT.from_hf(hf)
    assert ours.config.activation == "gelu" and ours.blocks[1].mlp[2].in_features == 48
    ids = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) < TOL


def test_from_hf_rejects_what_it_cannot_load(pair):
    hf, ours = pair
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        GPT.from_hf(ours)
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        GPT.from_hf(hf.transformer)  # a GPT2Model: no LM head
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        GPT.from_hf(tiny_gpt2(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        GPT.from_hf(tiny_gpt2(activation_function="relu"))
