"""In-context few-shot learning: the episodes (words for colours that only the examples define),
Frozen's forward pass on interleaved prompts, and the shipped few-shot Frozen."""

import pytest
import tiny
import torch

from minimodels.data.fewshot import (
    LABEL_WORDS,
    MAX_SHOTS,
    WAYS,
    episode_images,
    fewshot_episodes,
    first_shots,
    ideal_accuracy,
)
from minimodels.frozen import Frozen, FrozenConfig, interleaved_forward, prefix_forward
from minimodels.gpt import TOKENIZER
from minimodels.recipes import frozen as recipe


def color(scene):
    return scene["objects"][0]["color"]


# ---- the episodes ------------------------------------------------------------------------------


def test_episodes_are_deterministic_in_their_seed():
    a, b = fewshot_episodes("test", 30, 2, seed=4), fewshot_episodes("test", 30, 2, seed=4)
    assert [e["prompt"] + e["answer"] for e in a] == [e["prompt"] + e["answer"] for e in b]
    assert (episode_images(a) == episode_images(b)).all()
    c = fewshot_episodes("test", 30, 2, seed=5)
    assert [e["mapping"] for e in a] != [e["mapping"] for e in c]


@pytest.mark.parametrize("shots", [1, 2, 3, 4])
def test_the_examples_define_the_mapping_and_the_answer_is_the_query_colours_word(shots):
    for e in fewshot_episodes("train", 50, shots, seed=1):
        *examples, query = e["scenes"]
        assert len(examples) == shots == len(e["words"]) and len(e["mapping"]) == WAYS
        assert e["words"] == [e["mapping"][color(s)] for s in examples]
        assert e["prompt"] == " ".join(f"<image> {w}." for w in e["words"]) + " <image>"
        assert e["answer"] == e["mapping"][color(query)] and color(query) == e["query_color"]
        assert len(set(e["words"])) == shots and set(e["words"]) <= set(LABEL_WORDS)
        assert all(query is not s for s in examples)  # the query is another picture
        if color(query) not in {color(s) for s in examples}:
            assert e["answer"] not in e["words"]  # a word the prompt has not used


def test_words_change_meaning_from_prompt_to_prompt():
    episodes = fewshot_episodes("train", 300, 2, seed=0)
    meanings = {w: {c for e in episodes for c, v in e["mapping"].items() if v == w}
                for w in LABEL_WORDS}  # fmt: skip
    assert all(len(colours) >= 5 for colours in meanings.values()), meanings
    covered = sum(e["query_color"] in {color(s) for s in e["scenes"][:-1]} for e in episodes)
    assert 0.35 < covered / 300 < 0.65  # shots / ways = 2 / 4


def test_zero_shot_prompts_carry_no_mapping():
    for e in fewshot_episodes("test", 20, 0, seed=3):
        assert e["prompt"] == "<image>" and e["words"] == [] and len(e["scenes"]) == 1
    assert ideal_accuracy(0) == pytest.approx(1 / len(LABEL_WORDS))
    assert ideal_accuracy(WAYS) == 1.0
    assert ideal_accuracy(1) < ideal_accuracy(2) < ideal_accuracy(4)


def test_first_shots_keeps_the_words_and_the_query():
    e = fewshot_episodes("test", 1, 4, seed=2)[0]
    for k in range(5):
        f = first_shots(e, k)
        assert f["words"] == e["words"][:k] and f["scenes"][-1] is e["scenes"][-1]
        assert f["answer"] == e["answer"] and f["prompt"].count("<image>") == k + 1
    with pytest.raises(ValueError, match="shots"):
        first_shots(e, 5)
    with pytest.raises(TypeError, match="episode"):
        first_shots(e["prompt"], 1)


def test_colours_can_repeat_in_training_prompts_only_when_asked():
    episodes = fewshot_episodes("train", 50, MAX_SHOTS, seed=0, distinct=False)
    repeats = [len({color(s) for s in e["scenes"][:-1]}) < MAX_SHOTS for e in episodes]
    assert all(repeats)  # 12 examples, at most 4 colours
    for e in episodes:
        assert e["words"] == [e["mapping"][color(s)] for s in e["scenes"][:-1]]
    with pytest.raises(ValueError, match="shots"):
        fewshot_episodes("train", 2, WAYS + 1)  # distinct colours: at most `ways` examples
    with pytest.raises(TypeError, match="distinct"):
        fewshot_episodes("train", 2, 1, distinct=1)


def test_train_and_test_episodes_use_different_pictures():
    train = episode_images(fewshot_episodes("train", 20, 4, seed=0))
    test = episode_images(fewshot_episodes("test", 20, 4, seed=0))
    assert train.shape == test.shape == (20, 5, 32, 32, 3) and train.dtype.name == "uint8"
    assert not (train == test).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"split": "heldout"}, ValueError, "split"), ({"split": "val"}, ValueError, "split"),
     ({"shots": WAYS + 1}, ValueError, "shots"), ({"shots": -1}, ValueError, "shots"),
     ({"shots": 2.0}, TypeError, "shots"), ({"n": 0}, ValueError, "n"),
     ({"seed": -1}, ValueError, "seed"), ({"ways": 7}, ValueError, "ways"),
     ({"image_size": 8}, ValueError, "image_size"), ({"n": "3"}, TypeError, "n")],
)  # fmt: skip
def test_wrong_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        fewshot_episodes(**kwargs)


def test_episode_images_rejects_what_is_not_a_list_of_episodes_of_one_size():
    mixed = fewshot_episodes("test", 2, 1, seed=0) + fewshot_episodes("test", 2, 2, seed=0)
    with pytest.raises(ValueError, match="same number of shots"):
        episode_images(mixed)
    for bad in ([], "episodes", [{"prompt": "x"}]):
        with pytest.raises(TypeError, match="episodes"):
            episode_images(bad)


# ---- the model on interleaved prompts ----------------------------------------------------------


def tiny_frozen():
    return Frozen(tiny.lm(), FrozenConfig(image_size=32, channels=(8, 8, 8), lm_dim=32)).eval()


def test_forward_on_interleaved_prompts_has_the_prompts_shape():
    model = tiny_frozen()
    for shots in (0, 2, 4):
        batch = recipe.episode_batch(fewshot_episodes("test", 3, shots, seed=0), 2)
        assert batch["images"].shape == (3, shots + 1, 3, 32, 32)
        out = model.forward_interleaved(batch["images"], batch["input_ids"],
                                        labels=batch["labels"])  # fmt: skip
        T = 1 + 4 * shots + 2 + 1  # <bos>, (2 visual words, word, ".") per example, query, answer
        assert batch["input_ids"].shape == (3, T)
        assert out.logits.shape == (3, T, TOKENIZER.vocab_size) and out.loss.isfinite()


def test_one_image_at_the_start_is_frozens_visual_prefix():
    lm, k = tiny.lm(), 2
    prefix = torch.randn(2, 1, k, 32)
    ids = torch.tensor([[7, 7, 5, 20, 30], [7, 7, 5, 21, 31]])  # <image> <image> <bos> …
    out = interleaved_forward(lm, prefix, ids, image_token_id=7)
    ref = prefix_forward(lm, prefix[:, 0], ids[:, k:])
    torch.testing.assert_close(out.logits, ref.logits)


def test_interleaved_forward_checks_the_placeholders():
    model = tiny_frozen()
    images = torch.rand(2, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="image_token_id"):  # 2 images need 4 placeholders
        model.forward_interleaved(images, torch.tensor([[5, 7, 7, 9], [5, 7, 7, 9]]))
    with pytest.raises(ValueError, match="images"):
        model.forward_interleaved(images[0], torch.tensor([[5, 7, 7, 9]]))


# ---- the shipped model -------------------------------------------------------------------------


def test_the_shipped_model_learns_from_examples_in_the_prompt():
    model = recipe.load_frozen("cpu")
    zero = recipe.fewshot_accuracy(model, 0, 150, seed=12)
    four = recipe.fewshot_accuracy(model, 4, 150, seed=12)
    assert four >= zero + 0.3, (zero, four)
    assert zero < 0.3  # at 0 shots the words mean nothing: chance is 1/8
