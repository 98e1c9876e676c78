"""minimodels.data.captions and questions: captions, question-answer pairs, referring
expressions and FOIL captions, each checked against the symbolic objects."""

import re
from collections import Counter

import numpy as np
import pytest
from shapeworld_checks import find, relation_holds

from minimodels import shapeworld as sw
from minimodels.data.captions import hard_negative, italian_caption

PHRASE_TO_POSITION = {v: k for k, v in sw.POSITION_PHRASES.items()}
RELATION_RE = "|".join(sw.RELATIONS)


@pytest.fixture(scope="module")
def train_scenes():
    return sw.sample_scenes("train", 3000, seed=0)


def test_all_text_tokenizes_without_unk(tok, train_scenes):
    scenes = train_scenes[:300] + sw.sample_scenes("heldout", 100, seed=2, max_objects=9)
    for sc in scenes:
        texts = [sc["caption"], *sc["questions"], *sc["answers"]]
        texts += [sw.describe(sc, t) for t in range(sw.NUM_TEMPLATES)]
        texts += [e for e, _ in sw.referring_expressions(sc)]
        for text in texts:
            assert "[UNK]" not in tok.tokenize(text), text
    for a in sw.ANSWERS:
        assert "[UNK]" not in tok.tokenize(a)


def test_questions_cover_all_kinds(train_scenes):
    kinds = Counter()
    for sc in train_scenes[:300]:
        for q in sc["questions"]:
            kinds[" ".join(q.split()[:2])] += 1
    for k in ("how many", "what color", "what shape", "where is", "is there", "is the"):
        assert kinds[k] > 0, k
    answers = Counter(a for sc in train_scenes[:300] for a in sc["answers"])
    assert answers["yes"] > 0 and answers["no"] > 0


def test_describe_templates(train_scenes):
    for sc in train_scenes[:200]:
        objs = sc["objects"]
        for t in range(sw.NUM_TEMPLATES):
            text = sw.describe(sc, template=t)
            words = re.findall(r"\w+", text)
            for o in objs:
                assert o["color"] in words and o["shape"] in words, (t, text)
            if t in (0, 1):
                for o in objs:
                    assert sw.POSITION_PHRASES[o["position"]] in text
            if t in (0, 3):
                assert [w for w in words if w in sw.SIZES] == [o["size"] for o in objs]
            if t == 3:
                assert not any(p in text for p in sw.POSITION_PHRASES.values())
            if t == 1 and len(objs) > 1:
                assert text.startswith(f"there are {sw.NUMBER_WORDS[len(objs)]} shapes")
            if t == 2 and len(objs) >= 2:
                m = re.match(rf"a (\w+) (\w+) ({RELATION_RE}) a (\w+) (\w+)", text)
                assert m, text
                (oa,) = find(objs, m[1], m[2])
                (ob,) = find(objs, m[4], m[5])
                assert relation_holds(m[3], oa, ob, 32), text
    with pytest.raises(ValueError, match="template"):
        sw.describe(train_scenes[0], template=4)


def matching_objects(expr, objects):
    """Indices of the objects that a referring expression describes (parsed independently)."""
    if m := re.fullmatch(r"the shape (.+)", expr):
        hit = [o["position"] == PHRASE_TO_POSITION[m[1]] for o in objects]
    elif m := re.fullmatch(r"the only (\w+)", expr):
        hit = [o["shape"] == m[1] for o in objects]
    elif m := re.fullmatch(r"the (\w+) one", expr):
        hit = [o["color"] == m[1] for o in objects]
    elif m := re.fullmatch(r"the (\w+) (\w+)", expr):
        hit = [(o["color"], o["shape"]) == (m[1], m[2]) for o in objects]
    else:
        raise AssertionError(f"unexpected expression {expr!r}")
    return [i for i, h in enumerate(hit) if h]


def test_referring_expressions_pick_one_object(train_scenes):
    forms = Counter()
    for sc in train_scenes[:400]:
        exprs = sw.referring_expressions(sc)
        assert {i for _, i in exprs} == set(range(len(sc["objects"])))
        for expr, i in exprs:
            assert matching_objects(expr, sc["objects"]) == [i], expr
            forms[expr.split()[1]] += 1
    assert forms["shape"] > 0 and forms["only"] > 0


def test_foil_caption(train_scenes):
    vocab = set(sw.COLORS) | set(sw.SHAPES)
    for k, sc in enumerate(train_scenes[:300]):
        cap = sc["caption"]
        foil, i, word = sw.foil_caption(cap, np.random.default_rng(k))
        a, b = cap.split(), foil.split()
        assert len(a) == len(b)
        diff = [j for j in range(len(a)) if a[j] != b[j]]
        assert diff == [i]
        old, new = a[i].strip(",:"), b[i].strip(",:")
        assert old == word and old != new
        assert {old, new} <= set(sw.COLORS) or {old, new} <= set(sw.SHAPES)
        assert old in vocab
        assert a[i].replace(old, "") == b[i].replace(new, "")  # punctuation kept
    cap = train_scenes[0]["caption"]
    assert sw.foil_caption(cap, np.random.default_rng(3)) == sw.foil_caption(
        cap, np.random.default_rng(3)
    )
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="caption"):
            sw.foil_caption(bad)
    with pytest.raises(ValueError, match="caption"):
        sw.foil_caption("a small thing on the left")


def test_hard_negatives_are_false_and_close():
    rng = np.random.default_rng(0)
    scenes = sw.sample_scenes("test", 300, seed=2)
    kinds = set()
    for s in scenes:
        t = int(rng.integers(sw.NUM_TEMPLATES))
        neg, kind = hard_negative(s, t, rng)
        pos = sw.describe(s, template=t)
        kinds.add(kind)
        assert neg != pos
        assert len(neg.split()) == len(pos.split())  # same template, one attribute changed
        changed = [a for a, b in zip(pos.split(), neg.split()) if a != b]
        assert len(changed) == (2 if kind == "exchange" else 1), (pos, neg, kind)
        if kind == "exchange":
            assert sorted(pos.split()) == sorted(neg.split())  # same bag of words
        # the negative names a colour-shape pair that the scene does not contain
        pairs = {(o["color"], o["shape"]) for o in s["objects"]}
        words = neg.replace(",", "").split()
        named = {(a, b) for a, b in zip(words, words[1:]) if a in sw.COLORS and b in sw.SHAPES}
        assert named - pairs, (pos, neg)
    assert kinds == {"colour", "shape", "exchange"}


def test_italian_caption_agrees_in_gender():
    scene = sw.make_scene(
        [
            {"shape": "cross", "color": "red", "size": "small", "position": "left"},
            {"shape": "circle", "color": "red", "size": "small", "position": "top"},
        ]
    )
    assert italian_caption(scene) == (
        "una piccola croce rossa a sinistra e un piccolo cerchio rosso in alto"
    )
