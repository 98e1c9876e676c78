"""The DALL-E prior's recipe (minimodels/recipes/dalle.py): its training data, a short training
run, the faithfulness evaluation, and the shipped pipeline against its bars."""

import pytest
import torch

import minimodels
from minimodels.clip import CLIP, CLIPConfig
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.dvae import DVAE, DVAEConfig
from minimodels.pipelines import DALLEPipeline
from minimodels.recipes.dalle import (
    evaluate_dalle,
    faithful,
    load_dalle,
    prior_dataset,
    train_prior,
)
from minimodels.recipes.judge import load_judge

TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)
TINY_PRIOR = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=1, heads=2)


@pytest.fixture(scope="module")
def dvae():
    torch.manual_seed(0)
    return DVAE(TINY_DVAE).eval()


def test_faithful_needs_the_colour_and_the_shape_on_one_object():
    readings = [
        {"objects": [{"color": "red", "shape": "circle"}]},
        {"objects": [{"color": "red", "shape": "square"}, {"color": "blue", "shape": "circle"}]},
        {"objects": []},
    ]
    assert faithful(readings, "red", "circle") == [True, False, False]


def test_prior_dataset_is_encoded_scenes_with_captions(dvae):
    captions, codes = prior_dataset(dvae, 20, seed=1, single=0.75)
    assert len(captions) == 20 and codes.shape == (20, 8, 8) and codes.dtype == torch.long
    assert all(isinstance(c, str) and c for c in captions)
    again = prior_dataset(dvae, 20, seed=1, single=0.75)
    assert again[0] == captions and torch.equal(again[1], codes)
    assert prior_dataset(dvae, 20, seed=2)[0] != captions


def test_short_prior_training_lowers_the_loss(dvae):
    prior, history = train_prior(dvae, steps=60, batch_size=16, config=TINY_PRIOR, n_data=200,
                                 lr=3e-3, progress=False)  # fmt: skip
    assert isinstance(prior, DALLEPrior) and not prior.training and len(history) == 60
    assert sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5


def test_evaluate_dalle_reports_guided_and_unguided_rates_deterministically(dvae):
    torch.manual_seed(0)
    pipe = DALLEPipeline(DALLEPrior(TINY_PRIOR), dvae)
    clip = CLIP(CLIPConfig(vision_width=16, vision_layers=1, text_width=16, text_layers=1))
    kw = dict(seed=0, n=3, pipe=pipe, judge=load_judge("cpu"), clip=clip, candidates=2)
    a = evaluate_dalle(**kw)
    rates = {f"prompt_faithfulness{split}{tail}" for split in ("", "_heldout")
             for tail in ("", "_reranked", "_any_of_2", "_no_guidance")}  # fmt: skip
    assert set(a) == rates | {"guidance_scale"} and a["guidance_scale"] == 2.0
    assert all(0 <= a[k] <= 1 for k in rates)
    for split in ("", "_heldout"):
        assert (
            a[f"prompt_faithfulness{split}_any_of_2"] >= a[f"prompt_faithfulness{split}_reranked"]
        )
        assert a[f"prompt_faithfulness{split}_any_of_2"] >= a[f"prompt_faithfulness{split}"]
    assert a == evaluate_dalle(**kw)


def test_shipped_pipeline_loads_and_generates():
    pipe = minimodels.pretrained("dalle", device="cpu")
    assert isinstance(pipe, DALLEPipeline) and pipe.prior.config.grid == pipe.dvae.config.grid
    images = pipe(["a red circle"], num_images_per_prompt=2)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_shipped_pipeline_meets_the_bars_on_a_fresh_seed():
    # issue 5's bars on seen pairs (0.70 with one sample, 0.80 with CLIP's pick of 8) and
    # issue 19's on held-out pairs (0.60 and 0.75), all with the evaluation's guidance
    metrics = evaluate_dalle(seed=12345, n=40, pipe=load_dalle(device="cpu"), device="cpu")
    assert metrics["prompt_faithfulness"] >= 0.70, metrics
    assert metrics["prompt_faithfulness_reranked"] >= 0.80, metrics
    assert metrics["prompt_faithfulness_heldout"] >= 0.60, metrics
    assert metrics["prompt_faithfulness_heldout_reranked"] >= 0.75, metrics
    # guidance is what composes: without it the held-out pairs fall well below
    assert (
        metrics["prompt_faithfulness_heldout_no_guidance"] < metrics["prompt_faithfulness_heldout"]
    )
