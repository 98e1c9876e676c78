"""The tiny GPT: next-token loss, causality, padding, inputs_embeds, generation with its KV
cache, bad input, and its vocabulary. (Its pre-training: tests/test_recipes_gpt.py.)"""

import pytest
import torch
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.data.captions import italian_caption
from minimodels.gpt import GPT, TOKENIZER, GPTConfig, causal_lm_loss
from minimodels.text import Tokenizer

TINY = GPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=48)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


def ids_of(text):
    return torch.tensor([TOKENIZER.encode(text, add_special_tokens=False)])


def test_vocabulary_extends_shapeworld_without_moving_clip_ids():
    clip_tok = Tokenizer()  # the tokenizer CLIP was trained with
    for word, i in clip_tok.vocab.items():
        assert TOKENIZER.vocab[word] == i, word
    assert TOKENIZER.vocab_size > clip_tok.vocab_size
    scenes = sw.sample_scenes("test", 50, seed=3)
    for s in scenes:
        for text in (italian_caption(s), s["caption"], " ".join(s["questions"])):
            assert "[UNK]" not in TOKENIZER.tokenize(text), text


def test_loss_is_shifted_cross_entropy_ignoring_minus_100(model):
    ids = ids_of("<bos> a red circle on the left <eos>")
    labels = ids.clone()
    labels[0, :3] = -100  # no loss on the first tokens
    out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (1, ids.shape[1], TINY.vocab_size)
    # position t predicts token t+1; targets 1, 2 are ignored (labels -100)
    expected = F.cross_entropy(out.logits[0, 2:-1], ids[0, 3:])
    torch.testing.assert_close(out.loss, expected)
    nothing = causal_lm_loss(out.logits, torch.full_like(ids, -100))
    assert nothing.item() == 0.0 and nothing.requires_grad is out.logits.requires_grad


def test_causal_future_tokens_do_not_change_the_past(model):
    a = ids_of("<bos> a red circle on the left")
    b = a.clone()
    b[0, -1] = TOKENIZER.vocab["right"]
    la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :-1], lb[:, :-1])
    assert not torch.allclose(la[:, -1], lb[:, -1])


def test_left_padding_and_inputs_embeds_give_the_same_logits(model):
    ids = ids_of("<bos> how many shapes are there?")
    pad = torch.full((1, 3), TOKENIZER.pad_token_id)
    padded = torch.cat([pad, ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    plain = model(ids).logits
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], plain)
    emb = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=emb).logits, plain)


def test_generate_greedy_sampled_and_eos(model):
    ids = ids_of("<bos> a red")
    out = model.generate(ids, max_new_tokens=5, eos_token_id=None)
    assert out.shape == (1, ids.shape[1] + 5) and torch.equal(out[:, :3], ids)
    # greedy = argmax of the next-token logits at every step
    nxt = model(out[:, :-1]).logits[:, 2:].argmax(-1)
    torch.testing.assert_close(nxt, out[:, 3:])
    s1 = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=2.0, seed=1)
    s2 = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=2.0, seed=1)
    torch.testing.assert_close(s1, s2)
    draws = {
        tuple(model.generate(ids, max_new_tokens=4, do_sample=True, temperature=3.0, seed=k)[0])
        for k in range(6)
    }
    assert len(draws) > 1  # sampling does sample
    # a row stops at its first <eos> and is padded afterwards
    first = int(out[0, 3])
    stopped = model.generate(ids, max_new_tokens=5, eos_token_id=first)
    assert stopped.shape[1] == ids.shape[1] + 1


def test_generate_pads_rows_that_ended_and_stops_when_all_have(model):
    ids = torch.cat([ids_of("<bos> a red"), ids_of("<bos> a blue")])
    free = model.generate(ids, max_new_tokens=6, eos_token_id=None)[:, 3:]  # (2, 6)
    eos = int(free[0, 1])  # row 0 "ends" at its second new token
    ends = [int((row == eos).nonzero()[0]) if (row == eos).any() else None for row in free]
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)[:, 3:]
    assert out.shape[1] == (6 if None in ends else max(ends) + 1)
    for row, full, end in zip(out, free, ends):
        end = len(out[0]) if end is None else end
        assert torch.equal(row[: end + 1], full[: end + 1])  # the same tokens up to its <eos>
        assert (row[end + 1 :] == 0).all()  # then padding


def test_kv_cache_matches_the_full_forward_pass_with_left_padding(model):
    rows = [TOKENIZER.encode(t, add_special_tokens=False)
            for t in ("<bos> a red", "<bos> how many shapes are there")]  # fmt: skip
    T = max(len(r) for r in rows)
    ids = torch.tensor([[TOKENIZER.pad_token_id] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], 1)
    logits = model(out[:, :-1], attention_mask=full_mask[:, :-1]).logits  # (2, T + 5, V)
    assert torch.equal(logits[:, T - 1 :].argmax(-1), out[:, T:])  # greedy, step by step
    # the cache fed 4 positions, then 1, then 3 gives the logits of one full pass
    caches = [[] for _ in model.blocks]
    emb, keep = model.get_input_embeddings()(out[:, :-1]), full_mask[:, :-1].bool()
    parts = [model._decode(emb[:, a:b], keep[:, :b], True, caches)
             for a, b in ((0, 4), (4, 5), (5, T + 5))]  # fmt: skip
    torch.testing.assert_close(torch.cat(parts, 1)[keep], logits[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"temperature": 0.0, "do_sample": True}, ValueError, "temperature"),
        ({"max_new_tokens": 100}, ValueError, "n_positions"),
    ],
)
def test_generate_rejects_bad_arguments(model, kwargs, err, words):
    with pytest.raises(err, match=words):
        model.generate(ids_of("<bos> a red"), **kwargs)


def test_forward_rejects_bad_input(model):
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[0, 999]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="n_embd"):
        model(inputs_embeds=torch.zeros(1, 3, 7))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 60, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have the shape"):
        model(ids_of("<bos> a"), labels=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie in"):
        model(ids_of("<bos> a"), labels=torch.tensor([[5, -3]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids_of("<bos> a"), attention_mask=torch.ones(1, 3))
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        GPT({"n_embd": 32})
    with pytest.raises(ValueError, match="n_embd=30 must be divisible by n_head=4"):
        GPT(GPTConfig(n_embd=30, n_head=4))
