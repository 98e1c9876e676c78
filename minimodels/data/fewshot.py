"""Few-shot episodes: new words for colours that only the examples in the prompt define.

Frozen (Tsimpoukelli et al., 2021) and Flamingo (Alayrac et al., 2022) are few-shot learners: a
prompt of interleaved image-text examples sets a task that the weights never fixed. Frozen's
"fast binding" test gives new words to familiar things ("this is a dax", "this is a blicket")
and asks for the word of a new picture. Here is that test on ShapeWorld::

    <image> alto. <image> basso. <image>     →  alto (the query has the first image's colour)

Each episode draws ``ways`` colours and gives each a different word of `LABEL_WORDS`, at
random, so a word means nothing outside its prompt. ``shots`` examples (one image of each of
``shots`` of those colours, with its word) come before the query, an image of one of the
``ways`` colours (another picture than its example). The query's colour is among the examples'
with probability shots / ways; when it is not, its word is one the prompt has not used. A model
that reads the examples perfectly is right with probability (`ideal_accuracy`)

    shots / ways + (1 − shots / ways) / (len(words) − shots)

which rises from chance, 1 / len(words), at 0 shots (a prompt with no example holds no
mapping) to 1 at ``shots = ways``. With ``distinct=False`` the examples' colours are drawn with
replacement, so a colour can come back within the prompt (longer prompts, for training).

Our GPT's vocabulary is fixed, so the "new" words are borrowed from it: Italian words for places
and sizes (and "una", "a"), which the GPT has read only inside Italian captions and which never
name a colour or a shape.

Splits: the images come from ShapeWorld's ``train`` or ``test`` stream (`sample_scenes`), so
test episodes never reuse a training picture. Determinism: the same arguments give the same
episodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimodels.checks import check_int
from minimodels.data.shapeworld import render, sample_scenes
from minimodels.data.world import COLORS, check_choice

# Words that name no colour, each one token of the GPT's vocabulary (minimodels.text.LM_WORDS).
LABEL_WORDS: tuple[str, ...] = (
    "alto", "basso", "centro", "destra", "sinistra", "grande", "piccolo", "una",
)  # fmt: skip
WAYS = 4  # colours an episode names (its "ways"); distinct examples show up to this many
IMAGE = "<image>"  # where an image goes in the prompt
MAX_EPISODES = 100_000
MAX_SHOTS = 12  # examples of a prompt whose colours may repeat (distinct=False)


def ideal_accuracy(shots: int, ways: int = WAYS, num_words: int = len(LABEL_WORDS)) -> float:
    """Accuracy of a model that reads the examples perfectly (and guesses among the unused
    words otherwise): shots / ways + (1 − shots / ways) / (num_words − shots).

    At 0 shots this is chance, 1 / num_words."""
    p = shots / ways  # the query's colour is among the examples'
    return p + (1 - p) / (num_words - shots)


def fewshot_episodes(
    split: str = "train",
    n: int = 1,
    shots: int = 2,
    seed: int = 0,
    ways: int = WAYS,
    image_size: int = 32,
    distinct: bool = True,
) -> list[dict]:
    """`n` episodes of `shots` examples each, deterministic in `seed`: 0 to `ways` examples of
    distinct colours, or (distinct=False) up to MAX_SHOTS whose colours may repeat.

    An episode is a dict::

        {"scenes": [example scenes ..., query scene],   one object each, shots + 1 of them
         "words":  [the examples' words],                 one per example, in order
         "prompt": "<image> alto. <image> basso. <image>",
         "answer": "alto",                                the query colour's word
         "mapping": {"red": "alto", ...},                 all `ways` colours of the episode
         "query_color": "red", "shots": 2}

    Render the pictures with `episode_images`.
    """
    check_choice("split", split, ("train", "test"))
    n = check_int(n, "n", 1, MAX_EPISODES)
    ways = check_int(ways, "ways", 1, min(len(COLORS), len(LABEL_WORDS) - 1))
    if not isinstance(distinct, bool):
        raise TypeError(f"distinct must be True or False; got {distinct!r}")
    shots = check_int(shots, "shots", 0, ways if distinct else MAX_SHOTS)
    seed = check_int(seed, "seed", 0)
    # A pool of one-object scenes of the split, grouped by colour; episodes pick from it.
    pool = sample_scenes(split, max(120, 6 * n), seed=seed, image_size=image_size,
                         max_objects=1)  # fmt: skip
    by_color = {c: [s for s in pool if s["objects"][0]["color"] == c] for c in COLORS}
    rng = np.random.default_rng(np.random.SeedSequence([seed, shots, ways, int(distinct), 7707]))
    colors, episodes = list(COLORS), []
    for _ in range(n):
        chosen = [colors[i] for i in rng.choice(len(colors), size=ways, replace=False)]
        words = [LABEL_WORDS[i] for i in rng.choice(len(LABEL_WORDS), size=ways, replace=False)]
        mapping = dict(zip(chosen, words))  # a new meaning for each word, this episode only
        if distinct:  # the examples' colours (chosen is already in random order)
            shown = chosen[:shots]
        else:
            shown = [chosen[int(i)] for i in rng.integers(ways, size=shots)]
        query_color = chosen[int(rng.integers(ways))]  # among the examples' w.p. shots / ways
        scenes = []
        for c in shown + [query_color]:
            group = [s for s in by_color[c] if all(s is not t for t in scenes)] or by_color[c]
            scenes.append(group[int(rng.integers(len(group)))])  # the query: another picture
        episodes.append({
            "scenes": scenes, "words": [mapping[c] for c in shown],
            "prompt": make_prompt([mapping[c] for c in shown]), "answer": mapping[query_color],
            "mapping": mapping, "query_color": query_color, "shots": shots,
        })  # fmt: skip
    return episodes


def make_prompt(words: Sequence[str]) -> str:
    """'<image> alto. <image> basso. <image>': one image per word, then the query's."""
    return " ".join([f"{IMAGE} {w}." for w in words] + [IMAGE])


def first_shots(episode: dict, shots: int) -> dict:
    """The same episode (same words, same query) with only its first `shots` examples."""
    if not isinstance(episode, dict) or "scenes" not in episode:
        raise TypeError("episode must be an episode dict (from fewshot_episodes)")
    shots = check_int(shots, "shots", 0, episode["shots"])  # the first `shots` examples
    scenes = episode["scenes"][:shots] + episode["scenes"][-1:]
    words = episode["words"][:shots]
    return {**episode, "scenes": scenes, "words": words, "prompt": make_prompt(words),
            "shots": shots}  # fmt: skip


def episode_images(episodes: Sequence[dict], image_size: int | None = None) -> np.ndarray:
    """The pictures of episodes with the same number of shots: uint8 (n, shots + 1, H, W, 3),
    the examples in order, then the query."""
    if isinstance(episodes, dict) or not isinstance(episodes, Sequence) or not episodes:
        raise TypeError("episodes must be a non-empty list of episode dicts (fewshot_episodes)")
    counts = {len(e["scenes"]) if isinstance(e, dict) and "scenes" in e else -1 for e in episodes}
    if -1 in counts:
        raise TypeError("episodes must be episode dicts with 'scenes' (from fewshot_episodes)")
    if len(counts) != 1:
        raise ValueError(f"episodes must all have the same number of shots; got images per "
                         f"episode {sorted(counts)}")  # fmt: skip
    flat = [s for e in episodes for s in e["scenes"]]
    images = render(flat, image_size)  # (n · (shots + 1), H, W, 3)
    return images.reshape(len(episodes), counts.pop(), *images.shape[1:])
