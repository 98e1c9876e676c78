"""Hostile input, property-based: whatever a student types into an entry point must end in a
ValueError or TypeError that names the parameter, or in an answer; never a hang or an exception
from deep inside PyTorch. The answer must be finite unless the input itself was not (NaN, inf,
1e30): entry points check shapes, dtypes and devices, and read values only where that costs no
device sync (token ids, images on the CPU), so NaN in may be NaN out.

The entry points are the ones a student calls: model forward / encode_* / generate, the
pipelines, the tokenizer and processors, the data loaders, `pretrained`. Inner layers,
scheduler internals and config dataclasses trust their callers and are not listed.

Each case is a public callable with a set of valid arguments. Hypothesis replaces one argument at
a time with something hostile: a wrong type, a negative or absurd number, NaN or inf, an empty
batch, a tensor of the wrong shape, dtype or device. ``python -m pytest tests/test_hostile.py -s``
prints how many cases ran.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minimodels
from minimodels import (
    checkpoint,
    diffusion,
    dit,
    dvae,
    flamingo,
    frozen,
    gan,
    gpt,
    latent,
    llava,
    lora,
    metrics,
    programs,
    qformer,
    shapeworld,
    text,
    train,
    unet,
    vilbert,
    vilt,
    viz,
)
from minimodels import clip as clip_mod
from minimodels import dalle as dalle_mod
from minimodels import judge as judge_mod
from minimodels.data import captions
from minimodels.pipelines import (
    DALLEPipeline,
    DDPMPipeline,
    LatentDiffusionPipeline,
    TextToImagePipeline,
)

RAN: Counter = Counter()
TIME_LIMIT_S = 20  # generous: the machine is shared; a hang is minutes, not seconds
EXAMPLES = 25

SCALARS = [None, True, -1, 0, 10**9, 2**63, 1.5, -0.5, math.nan, math.inf, "3", "", [1, 2], ()]


def tensor_variants(x: torch.Tensor) -> list:
    """Hostile versions of a valid tensor argument."""
    out = [
        x.unsqueeze(0),  # one dimension too many
        x.reshape(-1) if x.ndim > 1 else x[None, None],  # flattened / too few
        x.to(torch.bool),
        x.to(torch.complex64) if x.is_floating_point() else x.float() + 0.5,
        x.detach().numpy().tolist() if x.numel() < 64 else "tensor",
        torch.empty((0, *x.shape[1:]), dtype=x.dtype),  # an empty batch
        torch.empty(x.shape, dtype=x.dtype, device="meta"),  # another device
        x[..., :1],  # a wrong last dimension
    ]
    if x.is_floating_point():
        out += [torch.full_like(x, math.nan), torch.full_like(x, math.inf), x * 1e30]
    else:
        out += [x + 10**6, x - 10**6]  # ids / values far outside their range
    return out


@contextmanager
def time_limit(seconds: int):
    def handler(signum, frame):
        raise TimeoutError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def finite(result) -> bool:
    """True when every tensor / array / float inside ``result`` is finite (and not huge)."""
    if isinstance(result, torch.Tensor):
        return (
            result.device.type == "meta"
            or not (result.is_floating_point() or result.is_complex())
            or result.numel() == 0
            or bool(torch.isfinite(result).all() and result.abs().max() < 1e29)
        )
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return all(finite(getattr(result, f.name)) for f in dataclasses.fields(result))
    if isinstance(result, np.ndarray):
        return result.dtype.kind not in "fc" or bool(np.isfinite(result).all())
    if isinstance(result, float):
        return math.isfinite(result)
    if isinstance(result, dict):
        return all(finite(v) for v in result.values())
    if isinstance(result, (list, tuple)):
        return all(finite(v) for v in result[:50])
    return True


def check_call(name: str, fn, kwargs: dict, param: str, value) -> None:
    RAN[name] += 1
    call = {**kwargs, param: value}
    try:
        with time_limit(TIME_LIMIT_S), torch.no_grad():
            result = fn(**call)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert param in message or param.rstrip("s") in message, (
            f"{name}({param}={short(value)}) raised {type(err).__name__} without naming "
            f"{param!r}: {message}"
        )
        return
    except TimeoutError as err:
        pytest.fail(f"{name}({param}={short(value)}) hung: {err}")
    except Exception as err:  # noqa: BLE001
        pytest.fail(
            f"{name}({param}={short(value)}) raised {type(err).__name__}, not a ValueError or "
            f"TypeError naming {param!r}: {err}"
        )
    if finite(value):  # garbage in may be garbage out: no hidden sync is spent to catch it
        assert finite(result), f"{name}({param}={short(value)}) returned NaN or inf"


def short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return repr(value)[:60]


# ---------------------------------------------------------------------------------- the cases
# name -> (a factory returning (callable, valid kwargs)). Factories run lazily, once per test.


def _tok():
    return text.Tokenizer()


def _clip():
    torch.manual_seed(0)
    return clip_mod.CLIP(clip_mod.CLIPConfig(vision_width=32, text_width=32)).eval()


def _judge():
    torch.manual_seed(0)
    return judge_mod.Judge().eval()


def _seeded(factory):
    def make(*args, **kwargs):
        torch.manual_seed(0)
        return factory(*args, **kwargs)

    return make


def _boxes(n=2):
    return torch.tensor([[[2, 2, 12, 12], [16, 16, 30, 30]]] * n, dtype=torch.float32)


def _dalle():
    torch.manual_seed(0)
    return DALLEPipeline(dalle_mod.DALLEPrior().eval(), dvae.DVAE().eval())


def _text_to_image():
    torch.manual_seed(0)
    config = unet.UNetConfig(cross_attention_dim=32)
    return TextToImagePipeline(unet.UNet2DModel(config).eval(), _clip())


def _latent_pipe():
    torch.manual_seed(0)
    vae = latent.Autoencoder().eval()
    c = vae.config
    config = dit.DiTConfig(sample_size=c.latent_size, in_channels=c.latent_channels, cond_dim=64)
    return LatentDiffusionPipeline(vae, dit.DiTTransformer2DModel(config).eval(), _clip_64())


def _clip_64():
    torch.manual_seed(0)
    return clip_mod.CLIP().eval()


def _lm():
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(n_layer=1, n_embd=32, n_head=2)).eval()


def _images(n=2, size=32):
    return torch.rand(n, 3, size, size)


def _tokens(n=2):
    return _tok()(["a red circle", "a blue square"][:n], padding="max_length", max_length=8)[
        "input_ids"
    ]


CASES = {
    # data, tokenizer, registry
    "shapeworld.sample_scenes": lambda: (shapeworld.sample_scenes, dict(split="train", n=2, seed=0, image_size=32, min_objects=1, max_objects=3)),
    "shapeworld.generate": lambda: (shapeworld.generate, dict(split="test", n=2, seed=0, image_size=32)),
    "shapeworld.sample_single_objects": lambda: (shapeworld.sample_single_objects, dict(split="test", n=2, seed=0, image_size=24)),
    "shapeworld.render": lambda: (shapeworld.render, dict(scenes=shapeworld.sample_scenes("train", 2), image_size=32)),
    "shapeworld.describe": lambda: (shapeworld.describe, dict(scene=shapeworld.sample_scenes("train", 1)[0], template=0)),
    "shapeworld.foil_caption": lambda: (shapeworld.foil_caption, dict(caption="a red circle", rng=np.random.default_rng(0))),
    "shapeworld.make_scene": lambda: (shapeworld.make_scene, dict(objects=shapeworld.sample_scenes("train", 1)[0]["objects"], image_size=32)),
    "shapeworld.load": lambda: (shapeworld.load, dict(split="test", n=2, seed=0, image_size=16)),
    "captions.hard_negative": lambda: (captions.hard_negative, dict(scene=shapeworld.sample_scenes("test", 1, min_objects=2)[0], template=0, rng=np.random.default_rng(0))),
    "text.Tokenizer": lambda: (text.Tokenizer, dict(words=None, model_max_length=16)),
    "text.Tokenizer.__call__": lambda: (_tok().__call__, dict(texts=["a red circle"], padding="max_length", max_length=8)),
    "text.Tokenizer.decode": lambda: (_tok().decode, dict(ids=[5, 6, 7])),
    "minimodels.pretrained": lambda: (minimodels.pretrained, dict(name="judge", device="cpu")),
    "train.seed_everything": lambda: (train.seed_everything, dict(seed=0)),
    "train.get_device": lambda: (train.get_device, dict(device="cpu")),
    "checkpoint.weights_path": lambda: (checkpoint.weights_path, dict(name="clip")),
    # CLIP, the judge, the fusion encoders
    "clip.CLIP": lambda: (clip_mod.CLIP, dict(config=clip_mod.CLIPConfig(vision_width=32, text_width=32))),
    "clip.CLIP.encode_image": lambda: (_clip().encode_image, dict(images=_images(), normalize=True)),
    "clip.CLIP.encode_image_features": lambda: (_clip().encode_image_features, dict(images=_images(), layer=-1)),
    "clip.CLIP.encode_text": lambda: (_clip().encode_text, dict(tokens=_tokens(), normalize=True)),
    "clip.CLIP.forward": lambda: (_clip().forward, dict(images=_images(), tokens=_tokens())),
    "judge.Judge.read": lambda: (_judge().read, dict(images=_images(), batch_size=8)),
    "judge.prepare_images": lambda: (judge_mod.prepare_images, dict(images=_images(), image_size=32)),
    "vilbert.ViLBERT.forward": lambda: (_seeded(vilbert.ViLBERT)().eval().forward, dict(tokens=_tokens(), images=_images(), boxes=_boxes())),
    "vilbert.ViLBERT.embed_regions": lambda: (_seeded(vilbert.ViLBERT)().eval().embed_regions, dict(images=_images(), boxes=_boxes())),
    "vilbert.regions_from_scenes": lambda: (vilbert.regions_from_scenes, dict(scenes=shapeworld.sample_scenes("test", 2), max_regions=5)),
    "vilt.ViLT.forward": lambda: (_seeded(vilt.ViLT)().eval().forward, dict(tokens=_tokens(), images=_images())),
    # DALL-E
    "dvae.DVAE.encode": lambda: (_seeded(dvae.DVAE)().eval().encode, dict(images=_images())),
    "dvae.DVAE.decode": lambda: (_seeded(dvae.DVAE)().eval().decode, dict(codes=torch.zeros(2, 8, 8, dtype=torch.long))),
    "dvae.DVAE.forward": lambda: (_seeded(dvae.DVAE)().eval().forward, dict(images=_images())),
    "dalle.DALLEPrior.forward": lambda: (_seeded(dalle_mod.DALLEPrior)().eval().forward, dict(tokens=torch.zeros(2, 5, dtype=torch.long))),
    "pipelines.DALLEPipeline.__call__": lambda: (_dalle().__call__, dict(prompt=["a red circle"], num_images_per_prompt=1, guidance_scale=1.0, temperature=1.0, top_k=4)),
    "pipelines.DALLEPipeline.rerank": lambda: (_dalle().rerank, dict(images=_images(), prompt="a red circle", clip=_clip())),
    # diffusion
    "diffusion.DDPMScheduler": lambda: (diffusion.DDPMScheduler, dict(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    "diffusion.DDPMScheduler.set_timesteps": lambda: (diffusion.DDPMScheduler(100).set_timesteps, dict(num_inference_steps=10)),
    "diffusion.sample_loop": lambda: (diffusion.sample_loop, dict(eps_fn=lambda x, t: torch.zeros_like(x), scheduler=diffusion.DDIMScheduler(100), shape=(2, 3, 8, 8), num_inference_steps=5)),
    "unet.UNet2DModel.forward": lambda: (_seeded(unet.UNet2DModel)().eval().forward, dict(sample=torch.randn(2, 3, 20, 20), timestep=torch.tensor([1, 500]))),
    "dit.DiTTransformer2DModel.forward": lambda: (_seeded(dit.DiTTransformer2DModel)().eval().forward, dict(sample=torch.randn(2, 16, 6, 6), timestep=torch.tensor([1, 500]))),
    "latent.Autoencoder.encode": lambda: (_seeded(latent.Autoencoder)().eval().encode, dict(images=torch.rand(2, 3, 24, 24))),
    "latent.Autoencoder.decode": lambda: (_seeded(latent.Autoencoder)().eval().decode, dict(latents=torch.randn(2, 4, 6, 6))),
    "gan.ConditionalGAN.generate": lambda: (_seeded(gan.ConditionalGAN)().eval().generate, dict(prompts=["a red circle"], seed=0)),
    "pipelines.DDPMPipeline.__call__": lambda: (DDPMPipeline(_seeded(unet.UNet2DModel)().eval(), _seeded(unet.UNet2DModel)().eval()).__call__, dict(batch_size=2, num_inference_steps=2, guidance_scale=2.0, guidance_interval=(0, 500))),
    "pipelines.TextToImagePipeline.__call__": lambda: (_text_to_image().__call__, dict(prompt=["a red circle"], negative_prompt="a blue square", num_images_per_prompt=1, num_inference_steps=2, guidance_scale=3.0)),
    "pipelines.LatentDiffusionPipeline.__call__": lambda: (_latent_pipe().__call__, dict(prompt=["a red circle"], num_images_per_prompt=2, num_inference_steps=2, guidance_scale=3.0)),
    "metrics.frechet_distance": lambda: (metrics.frechet_distance, dict(feats_a=torch.randn(20, 4), feats_b=torch.randn(20, 4))),
    "metrics.valid_shapes": lambda: (metrics.valid_shapes, dict(images=torch.rand(2, 3, 20, 20, generator=torch.manual_seed(0)), threshold=0.9, max_objects=3)),
    # language models
    "gpt.GPT.forward": lambda: (_seeded(gpt.GPT)().eval().forward, dict(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]]))),
    "gpt.GPT.generate": lambda: (_seeded(gpt.GPT)().eval().generate, dict(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3)),
    "llava.merge_image_features": lambda: (llava.merge_image_features, dict(inputs_embeds=torch.randn(1, 5, 8), input_ids=torch.tensor([[1, 9, 9, 2, 3]]), image_features=torch.randn(1, 2, 8), image_token_id=9)),
    "llava.LlavaProcessor.__call__": lambda: (llava.LlavaProcessor().__call__, dict(text=["<image> what colour is the circle?"], images=_images(1))),
    "llava.Llava.forward": lambda: (_seeded(llava.LlavaForConditionalGeneration)().eval().forward, dict(pixel_values=_images(1), input_ids=llava.LlavaProcessor()(["<image> how many shapes are there?"], _images(1))["input_ids"])),
    "llava.Llava.generate": lambda: (_seeded(llava.LlavaForConditionalGeneration)().eval().generate, dict(images=_images(1), prompts=["<image> what colour is the circle?"], max_new_tokens=2)),
    "frozen.Frozen.forward": lambda: (frozen.Frozen(_lm()).eval().forward, dict(images=_images(1), input_ids=torch.tensor([[5, 6, 7]]))),
    "flamingo.Flamingo.forward": lambda: (flamingo.Flamingo(_lm()).eval().forward, dict(image_features=torch.randn(1, 16, 64), input_ids=torch.tensor([[5, 6, 7]]))),
    "qformer.QFormer.forward": lambda: (_seeded(qformer.QFormer)().eval().forward, dict(image_embeds=torch.randn(2, 9, 64))),
    "lora.LoRALinear": lambda: (lora.LoRALinear, dict(base=torch.nn.Linear(8, 8), r=2, alpha=4.0, dropout=0.0)),
    "lora.apply_lora": lambda: (lora.apply_lora, dict(model=torch.nn.Sequential(torch.nn.Linear(4, 4)), target_modules="0", r=2, alpha=4.0)),
    # analysis
    "viz.to_numpy_images": lambda: (viz.to_numpy_images, dict(images=_images())),
    "programs.parse": lambda: (programs.parse, dict(question="how many red shapes are there?")),
    "programs.answer": lambda: (programs.answer, dict(question="how many red shapes are there?", scene=shapeworld.sample_scenes("test", 1)[0])),
}  # fmt: skip


def hostile_pairs(kwargs: dict) -> list[tuple[str, object]]:
    """Every (parameter, hostile value) pair for one case: one argument spoiled at a time."""
    pairs = []
    for param, valid in kwargs.items():
        values = list(SCALARS)
        if isinstance(valid, torch.Tensor):
            values += tensor_variants(valid)
        pairs += [(param, v) for v in values]
    return pairs


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    total = sum(RAN.values())
    print(f"\nhostile input: {total} cases over {len(RAN)} public callables")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name):
    """Every hostile value for every parameter, one at a time; all failures listed together."""
    _, kwargs = CASES[name]()
    failures = []
    for param, value in hostile_pairs(kwargs):
        fn, fresh = CASES[name]()  # a fresh model per call: some calls modify their model
        try:
            check_call(name, fn, fresh, param, value)
        except (AssertionError, pytest.fail.Exception) as err:
            failures.append(str(err).splitlines()[0])
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)


TENSOR_CASES = sorted(
    name for name, factory in CASES.items()
    if any(isinstance(v, torch.Tensor) for v in factory()[1].values())
)  # fmt: skip
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]


@st.composite
def random_tensors(draw):
    shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=5))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from(["randn", "nan", "inf", "huge", "zeros"]))
    x = torch.randn(shape) * {"randn": 1, "nan": math.nan, "inf": math.inf, "huge": 1e38}.get(
        fill, 0
    )
    return x.to(dtype) if dtype.is_floating_point else x.nan_to_num().clamp(-9, 9).to(dtype)


@pytest.mark.parametrize("name", TENSOR_CASES)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_random_tensors(name, data):
    """Hypothesis draws tensors of any shape (empty included), dtype and content."""
    fn, kwargs = CASES[name]()
    param = data.draw(
        st.sampled_from(sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor)))
    )
    check_call(name, fn, kwargs, param, data.draw(random_tensors()))


def test_valid_arguments_of_every_case_work():
    """The baseline: each case's valid arguments do work (so a rejection above is real)."""
    for _name, factory in CASES.items():
        fn, kwargs = factory()
        with torch.no_grad():
            fn(**kwargs)
