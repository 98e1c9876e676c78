"""ViLBERT's recipe (pre-training targets and batches, the losses, training, the shipped
weights' bars) and the alignment benchmark it is measured on (recipes/alignment.py, shared with
ViLT and CLIP)."""

import numpy as np
import pytest
import tiny
import torch
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.data.captions import hard_negative, random_negative, relation_negative
from minimodels.recipes.alignment import (
    RELATION_CURRICULUM,
    TOKENIZER,
    fusion_forward,
    itm_pairs,
    itm_scores,
    mlm_accuracy,
    relation_batch,
)
from minimodels.recipes.vilbert import (
    evaluate_vilbert,
    load_vilbert,
    mask_tokens,
    pretraining_losses,
    soft_region_targets,
    train_vilbert,
    training_batch,
    vilbert_training_loss,
)
from minimodels.vilbert import (
    IGNORE_INDEX,
    ViLBERT,
    ViLBERTConfig,
    region_class,
    regions_from_scenes,
)
from minimodels.vilt import ViLT, ViLTConfig, ViLTOutput

TINY_VILT = ViLTConfig(width=32, layers=2, heads=4, patch_size=8)


# ---- pre-training targets ----------------------------------------------------------------------


def test_soft_region_targets_structure():
    labels = torch.tensor([region_class("red", "circle"), IGNORE_INDEX])
    p = soft_region_targets(labels, true_mass=0.8, similar_mass=0.15)
    assert p.shape == (2, 30)
    torch.testing.assert_close(p[0].sum(), torch.tensor(1.0))
    assert p[1].abs().sum() == 0
    assert p[0, region_class("red", "circle")].item() == pytest.approx(0.8)
    same = [region_class("red", s) for s in sw.SHAPES[1:]] + [
        region_class(c, "circle") for c in list(sw.COLORS)[1:]
    ]
    assert p[0, same].sum().item() == pytest.approx(0.15)
    assert p[0, region_class("blue", "cross")].item() == pytest.approx(0.05 / 20)
    # the KL loss is 0 exactly when the model predicts the detector's distribution
    assert F.kl_div(p[:1].log(), p[:1], reduction="batchmean").abs().item() < 1e-6
    with pytest.raises(ValueError, match="true_mass"):
        soft_region_targets(labels, true_mass=0.9, similar_mass=0.2)


def test_mask_tokens_masks_only_words_and_at_least_one(tok):
    batch = tok(["a red circle", "there are two shapes: a red circle on the left and a blue cross"])
    gen = torch.Generator().manual_seed(0)
    ids, labels = mask_tokens(
        batch["input_ids"], batch["attention_mask"], gen, p=0.15, at_least_one=True
    )
    chosen = labels != IGNORE_INDEX
    assert chosen.any(dim=1).all()  # at least one word per text
    assert (ids[chosen] == tok.mask_token_id).all()
    assert (labels[chosen] == batch["input_ids"][chosen]).all()
    assert not chosen[:, 0].any()  # never [CLS]
    assert not chosen[batch["attention_mask"] == 0].any()  # never padding
    big = tok(["a small red circle on the left and a large blue cross at the top"] * 400)
    _, lab = mask_tokens(big["input_ids"], big["attention_mask"], gen, p=0.15)
    rate = (lab != IGNORE_INDEX).float().sum() / (big["attention_mask"].sum() - 800)
    assert 0.12 < rate.item() < 0.19


def test_training_batch_masks_every_pair_but_labels_only_aligned_ones(tok):
    b = training_batch(0, batch_size=64, seed=0, vqa=True)
    aligned = b["itm_labels"].bool()
    assert 0.3 < aligned.float().mean() < 0.7
    # [MASK] appears in aligned and negative captions alike: no shortcut for the alignment head
    has_mask = (b["input_ids"] == tok.mask_token_id).any(dim=1)
    assert has_mask[aligned].any() and has_mask[~aligned].any()
    assert b["masked_regions"][~aligned].any() and not b["masked_regions"][:, 0].any()
    # ... but only aligned pairs have targets
    assert not (b["mlm_labels"][~aligned] != IGNORE_INDEX).any()
    assert (
        (b["mlm_labels"] != IGNORE_INDEX)
        == (has_mask[:, None] & (b["input_ids"] == tok.mask_token_id) & aligned[:, None])
    ).all()
    assert ((b["region_labels"] != IGNORE_INDEX) == (b["masked_regions"] & aligned[:, None])).all()
    assert b["answers"].shape == (64,) and b["answers"].max() < len(sw.ANSWERS)


def test_training_batch_relation_pairs_come_true_and_swapped_in_both_wordings():
    plain = training_batch(0, batch_size=64, seed=0)  # p_relation=0: no relation pairs
    mixed = training_batch(0, batch_size=64, seed=0, p_relation=1.0)
    scenes = sw.sample_scenes("train", 64, seed=1_000_000)  # the scenes of step 0, seed 0
    pairs = [relation_negative(s, converse=c) for s in scenes for c in (False, True)]
    true = {r[0] for r in pairs if r is not None}
    swapped = {r[1] for r in pairs if r is not None}
    captions = [tok_text(ids) for ids in mixed["input_ids"]]
    found = {(y, any(_same_unmasked(c, w) for w in (true if y else swapped)))
             for c, y in zip(captions, mixed["itm_labels"].tolist())}  # fmt: skip
    assert (1, True) in found and (0, True) in found  # true relation captions and their swaps
    n_rel = sum(any(_same_unmasked(c, w) for w in true | swapped) for c in captions)
    assert n_rel >= 30  # every scene with a relation (about two thirds of 64) gets a pair
    converse = {r[0] for s in scenes if (r := relation_negative(s, converse=True))}
    assert any(any(_same_unmasked(c, w) for w in converse) for c in captions)
    reading_swaps = {r[1] for s in scenes if (r := relation_negative(s))}
    assert not any(any(_same_unmasked(tok_text(ids), w) for w in reading_swaps)
                   for ids in plain["input_ids"])  # fmt: skip


def test_relation_batch_is_balanced_unmasked_relation_pairs_of_the_asked_words():
    for words in RELATION_CURRICULUM:
        b = relation_batch(3, batch_size=48, seed=0, words=words)
        captions = [" ".join(tok_text(ids)) for ids in b["input_ids"]]
        assert len(captions) == 48 and "[MASK]" not in " ".join(captions)  # nothing masked
        heads = [c.split(" and a ")[0] for c in captions]
        assert all(any(f" {w} a " in h for w in words) for h in heads), heads
        assert 0.3 < b["itm_labels"].float().mean() < 0.7  # true and swapped, about half each
        assert b["images"].dtype == torch.uint8 and b["boxes"].shape[0] == 48
    left = relation_batch(3, batch_size=48, seed=0, words=("to the left of",))
    assert all(" to the left of a " in " ".join(tok_text(ids)) for ids in left["input_ids"])
    again = relation_batch(3, batch_size=48, seed=0, words=("to the left of",))
    assert torch.equal(left["input_ids"], again["input_ids"])  # deterministic in (step, seed)


def test_train_vilbert_relation_phase_adds_its_steps():
    small = ViLBERTConfig(cnn_channels=8, text_width=16, vision_width=16, num_heads=2,
                          bi_hidden=16, co_layers=1)  # fmt: skip
    model, history = train_vilbert(steps=2, vqa_steps=1, batch_size=8, config=small,
                                   progress=False, device="cpu", relation_steps=3)  # fmt: skip
    assert len(history) == 6 and all(np.isfinite(history))


def test_itm_pairs_relation_pairs_defeat_the_reading_order_shortcut():
    # the shortcut both shipped models learned: "the caption that names the upper-left object
    # first is true". It is always right on reading-order pairs, always wrong on the converse
    a = itm_pairs(seed=5, n=200)

    def first_named_comes_first(caption, scene):
        colour, shape = caption.split()[1:3]  # 'a red circle ...'
        first = next(o for o in scene["objects"] if (o["color"], o["shape"]) == (colour, shape))
        return scene["objects"].index(first) == 0  # objects are in reading order

    right = [
        first_named_comes_first(t, a["scenes"][i])
        and not first_named_comes_first(f, a["scenes"][i])
        for i, t, f in zip(a["relation_index"], a["relation_positive"], a["relation"])
    ]
    converse = a["relation_converse"]
    assert all(r != c for r, c in zip(right, converse))
    assert 0.35 < np.mean(right) < 0.65  # the shortcut scores about a coin toss


def tok_text(ids) -> list[str]:
    keep = [int(i) for i in ids if int(i) not in TOKENIZER.special_ids or
            int(i) == TOKENIZER.mask_token_id]  # fmt: skip
    return TOKENIZER.convert_ids_to_tokens(keep)


def _same_unmasked(tokens: list[str], caption: str) -> bool:
    """The tokens are the caption's words, some replaced by [MASK]."""
    words = caption.replace(",", " ,").replace(":", " :").split()
    return len(words) == len(tokens) and all(t == w or t == "[MASK]" for t, w in zip(tokens, words))


def test_tiny_training_run_decreases_the_loss():
    torch.manual_seed(0)
    m = ViLBERT(tiny.VILBERT)
    batch = training_batch(0, batch_size=32, seed=0, vqa=True)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = {k: v.item() for k, v in pretraining_losses(m, batch).items()}
    for _ in range(30):
        loss = vilbert_training_loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = {k: v.item() for k, v in pretraining_losses(m, batch).items()}
    assert set(first) == {"mlm", "mrm", "itm", "vqa"}
    assert all(last[k] < first[k] for k in ("mlm", "itm", "vqa")), (first, last)


def test_train_vilbert_runs_both_phases():
    small = ViLBERTConfig(cnn_channels=8, text_width=16, vision_width=16, num_heads=2,
                          bi_hidden=16, co_layers=1)  # fmt: skip
    model, history = train_vilbert(steps=3, vqa_steps=2, batch_size=16, config=small,
                                   progress=False, device="cpu")  # fmt: skip
    assert len(history) == 5 and all(np.isfinite(history))
    assert not model.training


# ---- evaluation: the same pairs and scores for ViLBERT and ViLT ---------------------------------


def test_itm_pairs_are_deterministic_and_negatives_differ():
    a, b = itm_pairs(seed=3, n=20), itm_pairs(seed=3, n=20)
    assert a["positive"] == b["positive"] and a["hard"] == b["hard"] and a["random"] == b["random"]
    assert torch.equal(a["images"], b["images"]) and a["images"].dtype == torch.uint8
    assert all(p != h and p != r for p, h, r in zip(a["positive"], a["hard"], a["random"]))
    assert itm_pairs(seed=4, n=20)["positive"] != a["positive"]


def test_itm_pairs_relation_swaps_are_false_and_leave_the_other_pairs_alone():
    a = itm_pairs(seed=3, n=60)
    idx = a["relation_index"]
    assert len(idx) == len(a["relation"]) == len(a["relation_positive"]) > 10
    converse = a["relation_converse"]
    for i, true, swap, c in zip(idx, a["relation_positive"], a["relation"], converse):
        s = a["scenes"][i]
        assert len(s["objects"]) >= 2 and (true, swap) == relation_negative(s, converse=c)
        assert sorted(true.split()) == sorted(swap.split()) and true != swap
    # half the pairs name the object further right or down first: a model that only checks
    # that the first-named object comes first in reading order scores about 0.5
    assert 0.3 < np.mean(converse) < 0.7
    # the relation pairs draw nothing from the pairs' generator: the other captions are those
    # drawn before they existed (the figures of the shipped weights keep their values)
    rng = np.random.default_rng([3, 99])
    for i, s in enumerate(a["scenes"]):
        t = int(rng.integers(4))
        assert a["positive"][i] == sw.describe(s, template=t)
        assert a["random"][i] == random_negative(a["scenes"], i, t, rng)
        assert (a["hard"][i], a["hard_kind"][i]) == hard_negative(s, t, rng)


def test_itm_scores_are_the_forward_passes_log_odds(tok):
    torch.manual_seed(0)
    vilbert, vilt = ViLBERT(tiny.VILBERT).eval(), ViLT(TINY_VILT).eval()
    data = itm_pairs(seed=0, n=6)
    images, scenes, caps = data["images"], data["scenes"], data["positive"]
    r = regions_from_scenes(scenes, tiny.VILBERT.max_regions)
    with torch.no_grad():
        direct = vilbert(tok(caps, max_length=40), images, r["boxes"], region_mask=r["region_mask"])
        direct_vilt = vilt(tok(caps, max_length=40), images)
    # in chunks of 4 (the padding of each chunk differs): the same log-odds
    torch.testing.assert_close(itm_scores(vilbert, images, scenes, caps, batch_size=4),
                               direct.itm_score(), rtol=1e-5, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(itm_scores(vilt, images, scenes, caps, batch_size=4),
                               direct_vilt.itm_score(), rtol=1e-5, atol=1e-5)  # fmt: skip
    with torch.no_grad():
        out = fusion_forward(vilt, tok(caps), images, scenes)
    assert out.itm_logits.shape == (6, 2)


class _FixedMLM(ViLT):
    """A ViLT whose MLM logits are one-hot on fixed ids (`answer`) or on its input ids."""

    def __init__(self, answer=None):
        super().__init__(TINY_VILT)
        self.answer = answer

    def forward(self, tokens, images):
        ids = tokens["input_ids"] if self.answer is None else self.answer
        none = torch.zeros(0)
        return ViLTOutput(hidden=none, pooled=none, itm_logits=none,
                          mlm_logits=F.one_hot(ids, TINY_VILT.vocab_size).float())  # fmt: skip


def test_mlm_accuracy_scores_the_masked_word_only(tok):
    data = itm_pairs(seed=0, n=5)
    args = (data["images"], data["scenes"], data["positive"])
    truth = tok(data["positive"], max_length=40)["input_ids"]  # one chunk: the same padding
    assert mlm_accuracy(_FixedMLM(answer=truth), *args) == 1.0  # knows every word
    assert mlm_accuracy(_FixedMLM(), *args) == 0.0  # copies its input: predicts [MASK]


# ---- the shipped weights -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_metrics():
    return evaluate_vilbert(seed=12345, n=300, model=load_vilbert(device="cpu"))


def test_shipped_vilbert_meets_the_issue_bars_on_a_fresh_seed(shipped_metrics):
    # issue 6's bars (measured at --n 1000 on seeds 0 and 1: 0.938/0.945, 0.973/0.977,
    # 0.958/0.960); a seed the training never saw, n = 300
    m = shipped_metrics
    assert m["itm_acc_random"] >= 0.95, m  # random negatives
    assert m["itm_acc_hard"] >= 0.90, m  # one attribute swapped or two colours exchanged
    assert m["mlm_acc"] >= 0.90, m  # masked colour/shape words: 1/11 by chance
    assert m["vqa_acc"] >= 0.85, m
    # issue 19: relation swaps, half of them in the converse wording (measured at --n 1000,
    # seeds 10 / 11: 0.988 / 0.987; the shipped CLIP 0.486 / 0.489, which takes the shortcut of
    # test_itm_pairs_relation_pairs_defeat_the_reading_order_shortcut)
    assert m["itm_acc_relation"] >= 0.85, m
    assert "clip_itm_acc_hard" not in m and "retrieval" not in m  # no CLIP given
    assert "clip_itm_acc_relation" not in m
