"""DALLEPipeline (minimodels/pipelines.py): sampling with the KV cache against a plain loop over
the full forward, guidance, determinism and grouping, CLIP re-ranking, the entry checks."""

import pytest
import torch

from minimodels import shapeworld as sw
from minimodels.clip import CLIP, CLIPConfig
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.dvae import DVAE, DVAEConfig
from minimodels.pipelines import DALLEPipeline, classifier_free_guidance
from minimodels.text import Tokenizer

TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)
TINY_PRIOR = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return DALLEPipeline(DALLEPrior(TINY_PRIOR), DVAE(TINY_DVAE))


@pytest.fixture(scope="module")
def images():
    x, _ = sw.generate("test", 6, seed=3)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


@torch.no_grad()
def codes_without_cache(prior, prompts, negatives, w, temperature, top_k, generator):
    """The sampling loop written plainly: the whole sequence through `forward` at every step."""
    c, B = prior.config, len(prompts)
    text = prior.text_tokens(prompts + (negatives or []))
    soi = torch.full((len(text), 1), Tokenizer().soi_token_id, dtype=torch.long)
    seq = torch.cat([text, soi], 1)  # (B or 2B, L + 1)
    for _ in range(c.grid**2):
        logits = prior(seq)[:, -1, c.text_vocab_size :]  # (B or 2B, K)
        if negatives:
            logits = logits[B:] + w * (logits[:B] - logits[B:])  # ℓ(∅) + w (ℓ(c) − ℓ(∅))
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)
        seq = torch.cat([seq, (nxt + c.text_vocab_size).repeat(2 if negatives else 1, 1)], 1)
    return seq[:B, c.text_length + 1 :].view(B, c.grid, c.grid) - c.text_vocab_size


@pytest.mark.parametrize(
    "negatives, w, temperature, top_k",
    [(None, 1.0, 1.0, None), (None, 1.0, 0.7, 5), (["", ""], 3.0, 1.0, None),
     (["a red circle", "a blue square"], 2.0, 0.9, 8)],
)  # fmt: skip
def test_sampling_with_the_kv_cache_equals_the_plain_loop(pipe, negatives, w, temperature, top_k):
    prompts = ["a green cross", "a yellow triangle"]
    kw = dict(guidance_scale=w, temperature=temperature, top_k=top_k)
    g = torch.Generator().manual_seed(7)
    _, got = pipe(prompts, negative_prompt=negatives, generator=g, return_codes=True, **kw)
    g = torch.Generator().manual_seed(7)
    want = codes_without_cache(pipe.prior, prompts, negatives, w, temperature, top_k, g)
    assert torch.equal(got, want)


def test_guidance_default_negative_is_the_empty_prompt(pipe):
    kw = dict(guidance_scale=2.5, return_codes=True)
    a = pipe(["a red circle"], generator=torch.Generator().manual_seed(1), **kw)[1]
    b = pipe(["a red circle"], negative_prompt="", generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b[1])
    assert classifier_free_guidance(torch.tensor(3.0), torch.tensor(1.0), 2.5) == 6.0


def test_call_is_deterministic_grouped_by_prompt_and_decodes_its_codes(pipe):
    prompts = ["a red circle", "a cyan cross"]
    a, codes = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4),
                    return_codes=True)  # fmt: skip
    assert a.shape == (6, 3, 32, 32) and codes.shape == (6, 8, 8)
    assert 0 <= a.min() and a.max() <= 1 and codes.max() < 16
    torch.testing.assert_close(pipe.dvae.decode(codes), a)
    again = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(again, a)
    seed_0 = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pipe(prompts, num_images_per_prompt=3), seed_0)  # None: seed 0
    other = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(other, a)
    # top_k=1 is greedy: every sample of a prompt is the same
    greedy = pipe(["a red circle"], num_images_per_prompt=3, top_k=1)
    torch.testing.assert_close(greedy[0], greedy[2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt=[]), ValueError, "empty"),
        (dict(prompt=[3]), TypeError, "strings"),
        (dict(prompt=["a"], temperature=0.0), ValueError, "temperature"),
        (dict(prompt=["a"], top_k=0), ValueError, "top_k"),
        (dict(prompt=["a"], num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(prompt=["a"], guidance_scale=-1.0), ValueError, "guidance_scale"),
        (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ValueError, "negative_prompt"),
        (dict(prompt=["a"], generator=0), TypeError, "generator"),
    ],
)
def test_bad_call_arguments_raise(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_pipeline_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="disagree"):
        DALLEPipeline(DALLEPrior(TINY_PRIOR), DVAE(DVAEConfig(codebook_size=32, code_dim=8)))
    with pytest.raises(TypeError, match="prior"):
        DALLEPipeline(DVAE(TINY_DVAE), DVAE(TINY_DVAE))


def test_rerank_orders_by_clip_similarity(pipe, images):
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(vision_width=16, vision_layers=1, text_width=16, text_layers=1))
    order = pipe.rerank(images, "a red circle", clip)
    sims = clip.encode_image(images, True) @ clip.encode_text(Tokenizer()(["a red circle"]), True).T
    assert torch.equal(order, sims[:, 0].argsort(descending=True))
    # float images in [0, 1] rank the same as their uint8 originals; other sizes are resized
    assert torch.equal(pipe.rerank(images.float() / 255, "a red circle", clip), order)
    big = torch.nn.functional.interpolate(images.float() / 255, size=64)
    assert pipe.rerank(big, "a red circle", clip).shape == (6,)
    with pytest.raises(ValueError, match="prompt"):
        pipe.rerank(images, "", clip)
    with pytest.raises(TypeError, match="clip"):
        pipe.rerank(images, "a red circle", pipe.prior)
