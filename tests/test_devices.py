"""Device discipline (issue 23): no hard-coded device anywhere in minimodels/.

A model must run wherever its weights are. `DeviceCheck` watches every torch call and records
three kinds of problem, each with the line of minimodels/ that made it:

* an operation whose tensors live on different devices (a 0-dim CPU tensor mixes with any
  device, as PyTorch allows);
* a tensor made from nothing (``torch.zeros``, ``arange``, ``randn``, ...) on a device other
  than the model's: it needs ``device=x.device`` (or ``torch.zeros_like(x)``). Two kinds of new
  tensor may live on the CPU: host data (``torch.tensor([...])``, ``from_numpy``), which a
  tokenizer or an entry point makes from Python values and then moves once, and random numbers
  drawn from a CPU ``torch.Generator`` (noise drawn on the CPU gives the same images on every
  device);
* a copy off the model's device or a read of a value on the host (``.cpu()``, ``.item()``,
  ``.tolist()``, ``bool(x)``): on a GPU each is a sync. Reads of values computed on the
  model's device are also counted in ``syncs`` when that device is the CPU, so that a sampling
  loop can show it reads nothing per step.

There is no GPU here, so the check runs two ways on the CPU:

* forward passes on the ``meta`` device (shapes without data): the model is moved with
  ``.to("meta")`` and given CPU inputs, as a student would; every input must be moved to the
  model at its entry point, and nothing may be made on the CPU inside;
* generation and sampling, whose loops read values and cannot run on meta, run on the CPU under
  ``with torch.device("meta")``: a tensor made without ``device=`` lands on meta and is flagged.
"""

from __future__ import annotations

import traceback
from contextlib import nullcontext
from pathlib import Path

import pytest
import tiny
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import minimodels
from minimodels import shapeworld as sw
from minimodels.captioner import Captioner, CaptionerConfig
from minimodels.clip import CLIP
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.data.images import to_tensor
from minimodels.diffusion import DDIMScheduler, DDPMScheduler, sample_loop
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.dvae import DVAE, DVAEConfig
from minimodels.flamingo import Flamingo, FlamingoConfig
from minimodels.flow import FlowMatchEulerDiscreteScheduler
from minimodels.frozen import Frozen, FrozenConfig
from minimodels.gan import PAIRS, ConditionalGAN, GANConfig
from minimodels.gpt import TOKENIZER
from minimodels.judge import Judge, JudgeConfig
from minimodels.latent import Autoencoder, AutoencoderConfig
from minimodels.layers import (
    MultiHeadAttention,
    PatchEmbedding,
    TimestepEmbedding,
    TransformerBlock,
)
from minimodels.llava import LlavaForConditionalGeneration
from minimodels.lora import LoRALinear
from minimodels.pipelines import (
    DALLEPipeline,
    DDPMPipeline,
    LatentDiffusionPipeline,
    TextToImagePipeline,
)
from minimodels.qformer import Blip2, QFormerConfig
from minimodels.text import Tokenizer
from minimodels.unet import UNet2DModel, UNetConfig
from minimodels.vilbert import ViLBERT, regions_from_scenes
from minimodels.vilt import ViLT

PACKAGE = Path(minimodels.__file__).resolve().parent

# Host data: tensors made from Python values or numpy arrays, which live on the CPU first.
HOST_DATA = {"tensor", "as_tensor", "asarray", "from_numpy", "frombuffer"}
# Reads of a value on the host: a device sync on a GPU.
READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
# Moves between devices: not a mix, though a move off the model's device is flagged.
MOVES = {"to", "copy_", "type_as"}


def where(frames=None) -> str:
    """The innermost line of minimodels/ in a stack (default: the current one), skipping the
    input checks of minimodels/checks.py for the line that called them."""
    frames = traceback.extract_stack() if frames is None else frames
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    if not ours:
        return "outside minimodels/"
    frame = next((f for f in reversed(ours) if Path(f.filename).name != "checks.py"), ours[-1])
    rel = Path(frame.filename).resolve().relative_to(PACKAGE.parent)
    return f"{rel}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"


def tensors_in(value) -> list[torch.Tensor]:
    """Every tensor inside nested lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []


class DeviceCheck(TorchFunctionMode):
    """Records device problems of every torch call made while it is active (see the module)."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)
        self.problems: list[str] = []
        self.syncs: list[str] = []  # reads of values computed on the model's device
        # Tensors that would live on the model's device on a GPU: its weights, what is
        # computed from them, made there (device=...) or moved there. On the CPU the host's
        # tensors (ids, schedules) share the device; this tells them apart. id -> tensor.
        self.on_device: dict[int, torch.Tensor] = {}

    def flag(self, name: str, what: str) -> None:
        self.problems.append(f"{name}: {what}\n    at {where()}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs = tensors_in((args, kwargs))
        # tensors on several devices (a 0-dim CPU tensor is a scalar: fine anywhere)
        devices = {t.device for t in inputs if not (t.ndim == 0 and t.device.type == "cpu")}
        if len(devices) > 1 and name not in MOVES:
            self.flag(name, f"mixes devices {sorted(str(d) for d in devices)}")
        # a read on the host (before the call: on meta the call itself fails)
        computed = any(isinstance(t, nn.Parameter) or id(t) in self.on_device for t in inputs)
        if name in READS and inputs:
            if computed:
                self.syncs.append(f"{name} at {where()}")
            if inputs[0].device == self.device != torch.device("cpu"):
                self.flag(name, f"reads a tensor on {self.device} on the host")
        out = func(*args, **kwargs)
        outputs = tensors_in(out)
        # a copy off the model's device
        if name in MOVES and inputs and outputs:
            src, dst = inputs[0].device, outputs[0].device
            if src == self.device and dst != self.device:
                self.flag(name, f"moves a tensor off {self.device} to {dst}")
        # a tensor made from nothing, on another device than the model's
        generator = kwargs.get("generator")
        if not inputs and outputs:
            allowed = {self.device}
            if name in HOST_DATA:
                allowed.add(torch.device("cpu"))
            if isinstance(generator, torch.Generator):
                allowed.add(generator.device)  # drawn where its generator lives
            for t in outputs:
                if t.device not in allowed:
                    self.flag(name, f"makes a tensor on {t.device}, not {self.device}")
        # remember what would live on the model's device
        device = kwargs.get("device")
        made_there = not inputs and device is not None and name not in HOST_DATA
        made_there = made_there and not isinstance(generator, torch.Generator)
        moved_there = name in MOVES and (
            device is not None or any(isinstance(a, (torch.device, str)) for a in args[1:])
        )
        if (computed and name not in READS) or made_there or moved_there:
            same = {id(t) for t in inputs}  # x.to(its own device) is x: it stays the host's
            self.on_device.update(
                (id(t), t) for t in outputs if t.device == self.device and id(t) not in same
            )
        return out


def run_checked(fn, device, default_device=None):
    """fn() under DeviceCheck(device); with default_device, tensors made without device= land
    there. Fails with every problem found (an exception counts as one). Returns (out, check)."""
    check = DeviceCheck(device)
    out = None
    try:
        with torch.device(default_device) if default_device else nullcontext(), check:
            out = fn()
    except Exception as err:  # noqa: BLE001  (reported below, with where it happened)
        frames = traceback.extract_tb(err.__traceback__)
        check.problems.append(f"raised {type(err).__name__}: {err}\n    at {where(frames)}")
    assert not check.problems, "device problems:\n" + "\n".join(check.problems)
    return out, check


# ---- the check itself ------------------------------------------------------------------------


class MakesZeros(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) + torch.zeros(x.shape[-1])  # no device=: always the CPU


class ForgetsToMove(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)  # x is not moved to the weights' device


def test_the_check_flags_a_tensor_made_on_the_wrong_device():
    model, check = MakesZeros().to("meta"), DeviceCheck("meta")
    with check, pytest.raises(RuntimeError):  # meta refuses to add a CPU tensor
        model(torch.randn(2, 4, device="meta"))
    assert check.problems[0].startswith("zeros: makes a tensor on cpu, not meta")
    assert "mixes devices ['cpu', 'meta']" in check.problems[1]


def test_the_check_flags_mixed_devices_and_names_the_call():
    model, x, check = ForgetsToMove().to("meta"), torch.randn(2, 4), DeviceCheck("meta")
    with check, pytest.raises(RuntimeError):
        model(x)  # CPU input, meta weights
    assert check.problems[0].startswith("linear: mixes devices ['cpu', 'meta']")
    with pytest.raises(AssertionError, match="linear: mixes devices"):
        run_checked(lambda: model(x), "meta")


def test_the_check_flags_reads_and_tensors_made_without_a_device():
    check = DeviceCheck("cpu")
    with torch.device("meta"), check:
        torch.arange(3)  # lands on meta: no device= given
        torch.tensor([1, 2], device="cpu")  # host data: fine
        torch.randn(2, generator=torch.Generator().manual_seed(0), device="cpu")  # fine
        bool(torch.ones(1, device="cpu"))
    assert len(check.problems) == 1 and check.problems[0].startswith("arange: makes a tensor")
    assert len(check.syncs) == 1 and check.syncs[0].startswith("__bool__")


# ---- forward passes on the meta device -------------------------------------------------------

TOK = Tokenizer()
CAPTIONS = ["a red circle", "a blue square on the left"]
TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)
TINY_PRIOR = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=1, heads=2)
TINY_DIT = DiTConfig(sample_size=6, in_channels=4, hidden_size=32, num_layers=1,
                     num_classes=5, cond_dim=8)  # fmt: skip
TINY_VAE = AutoencoderConfig(block_out_channels=(8, 16), norm_num_groups=4)
TINY_CAPTIONER = CaptionerConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1,
                                 vision_heads=2, text_width=16, text_layers=1,
                                 text_heads=2)  # fmt: skip
TINY_QFORMER = QFormerConfig(encoder_hidden_size=16, hidden_size=24, num_query_tokens=3, lm_dim=32)


def images(n=2, size=32):
    """n ShapeWorld images, uint8 (n, 3, size, size), on the CPU."""
    x, _ = sw.generate("test", n, seed=1, image_size=size)
    return to_tensor(x)


def meta(x: torch.Tensor) -> torch.Tensor:
    """An input of an inner layer, which trusts its caller to have moved it."""
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


def forward_cases():
    """name -> (model, call): the model is built on the CPU and moved to meta by the test;
    call(model) runs the forward pass on inputs made here, on the CPU (inner layers and the
    diffusion denoisers, which take x_t on their own device as diffusers' do, get meta ones)."""
    x, tokens = images(), TOK(CAPTIONS)
    scenes = sw.sample_scenes("test", 2, seed=1)
    regions = regions_from_scenes(scenes)
    ids = torch.tensor([[5, 9, 12, 13]] * 2)
    labels = ids.masked_fill(torch.tensor([True, True, False, False]), -100)
    feats = torch.randn(2, 5, 16)
    captioner_tokens = Captioner.encode_captions(CAPTIONS)
    llava = LlavaForConditionalGeneration(tiny.LLAVA)
    llava_inputs = llava.processor(["<bos> user: <image> what is it? assistant:"] * 2, x)
    yield "clip.encode_image", CLIP(tiny.CLIP), lambda m: m.encode_image(x, normalize=True)
    yield "clip.encode_text", CLIP(tiny.CLIP), lambda m: m.encode_text(tokens, normalize=True)
    yield "clip.forward", CLIP(tiny.CLIP), lambda m: m(x, tokens)
    yield "vilbert", ViLBERT(tiny.VILBERT), lambda m: m(
        tokens, x, regions["boxes"], region_mask=regions["region_mask"],
        masked_regions=regions["region_mask"], output_attentions=True,
    )  # fmt: skip
    yield "vilt", ViLT(tiny.VILT), lambda m: m(tokens, x, output_attentions=True)
    yield "dvae.encode", DVAE(TINY_DVAE), lambda m: m.encode(x)
    codes = torch.randint(0, 16, (2, 8, 8))
    yield "dvae.decode", DVAE(TINY_DVAE), lambda m: m.decode(codes)
    prior_tokens = DALLEPrior(TINY_PRIOR).sequence(CAPTIONS, codes)  # text, <soi>, codes
    yield "dalle.forward", DALLEPrior(TINY_PRIOR), lambda m: m.loss(prior_tokens)
    yield (
        "dalle.forward_cached",
        DALLEPrior(TINY_PRIOR),
        lambda m: m.forward_cached(prior_tokens[:, :20], []),
    )
    unet = UNet2DModel(UNetConfig(**tiny.UNET, cross_attention_dim=12))
    x_t, text = meta(torch.randn(2, 3, 16, 16)), meta(torch.randn(2, 5, 12))
    mask, t = meta(torch.tensor([[True] * 3 + [False] * 2] * 2)), torch.tensor([1, 999])
    yield "unet", unet, lambda m: m(x_t, 10, text, mask)
    yield "unet.timesteps", unet, lambda m: m(x_t, t)
    z_t, classes, condition = meta(torch.randn(2, 4, 6, 6)), torch.tensor([1, 2]), torch.randn(2, 8)
    drop = torch.tensor([True, False])
    yield (
        "dit",
        DiTTransformer2DModel(TINY_DIT),
        lambda m: m(z_t, 10, class_labels=classes, condition=condition, drop_condition=drop),
    )
    yield "dit.null", DiTTransformer2DModel(TINY_DIT), lambda m: m(z_t, 0.5)
    vae_images, latents = images(2, 24).float() / 127.5 - 1, torch.randn(2, 4, 6, 6)
    yield "latent.forward", Autoencoder(TINY_VAE), lambda m: m(vae_images)
    yield "latent.decode", Autoencoder(TINY_VAE), lambda m: m.decode(latents)
    left_padded, embeds = torch.tensor([[0, 1, 1, 1]] * 2), torch.randn(2, 4, 32)
    yield "gpt", tiny.lm(), lambda m: m(ids, left_padded, labels)
    yield "gpt.inputs_embeds", tiny.lm(), lambda m: m(inputs_embeds=embeds)
    yield "llava", llava, lambda m: m(**llava_inputs, labels=llava_inputs["input_ids"])
    flamingo_config = FlamingoConfig(vision_dim=16, lm_dim=32, num_latents=4)
    yield "flamingo", Flamingo(tiny.lm(), flamingo_config), lambda m: m(feats, ids, None, labels)
    yield "blip2", Blip2(tiny.lm(), TINY_QFORMER), lambda m: m(feats, ids, labels=labels)
    frozen_config = FrozenConfig(image_size=32, channels=(8, 8, 8), lm_dim=32)
    yield "frozen", Frozen(tiny.lm(), frozen_config), lambda m: m(x, ids, labels=labels)
    interleaved = torch.tensor([[TOKENIZER.image_token_id] * 2 + [5, 9]] * 2)
    yield (
        "frozen.interleaved",
        Frozen(tiny.lm(), frozen_config),
        lambda m: m.forward_interleaved(x[:, None], interleaved, labels=interleaved),
    )
    small = images(2, 16)
    yield "captioner", Captioner(TINY_CAPTIONER), lambda m: m(small, **captioner_tokens)
    yield "captioner.score", Captioner(TINY_CAPTIONER), lambda m: m.score_captions(small, CAPTIONS)
    yield "judge", Judge(JudgeConfig(channels=(4, 8, 8), hidden=16)), lambda m: m(x)
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    z, y, fake = (
        meta(torch.randn(2, 32)),
        meta(torch.tensor([0, 3])),
        meta(torch.rand(2, 3, 16, 16)),
    )
    yield "gan.generator", gan.generator, lambda m: m(z, y)
    yield "gan.discriminator", gan.discriminator, lambda m: m(fake, y)
    lora_in = meta(torch.randn(2, 3, 8))
    yield "lora", LoRALinear(nn.Linear(8, 6), r=2), lambda m: m(lora_in)
    h, ctx = meta(torch.randn(2, 5, 16)), meta(torch.randn(2, 3, 8))
    keep, steps = meta(torch.tensor([[True] * 4 + [False]] * 2)), meta(torch.tensor([1, 5]))
    yield (
        "layers.attention",
        MultiHeadAttention(16, 4),
        lambda m: m(h, key_padding_mask=keep, is_causal=True, return_attention=True),
    )
    yield (
        "layers.attention_cache",
        MultiHeadAttention(16, 4),
        lambda m: m(h, is_causal=True, kv_cache=[]),
    )
    yield (
        "layers.block",
        TransformerBlock(16, 4, cross_attention=True, context_dim=8),
        (lambda m: m(h, ctx)),
    )
    yield "layers.patch_embed", PatchEmbedding(16, 4, 3, 8), lambda m: m(fake)
    yield "layers.timestep_embedding", TimestepEmbedding(8), lambda m: m(steps)


FORWARD = {name: (model, call) for name, model, call in forward_cases()}


@pytest.mark.parametrize("name", list(FORWARD))
def test_forward_on_meta_moves_inputs_and_makes_nothing_elsewhere(name):
    model, call = FORWARD[name]
    model = model.eval().to("meta")
    run_checked(lambda: call(model), "meta")


# ---- generation and sampling on the CPU, with torch's default device set to meta ------------


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (also where a model starts at zero), so samples vary."""
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.2)
    return module.eval()


def tiny_unet(cross_attention_dim=None) -> UNet2DModel:
    return seeded(UNet2DModel(UNetConfig(**tiny.UNET, cross_attention_dim=cross_attention_dim)))


def generate_gpt(steps, **kw):
    model, tokens = tiny.lm(), TOKENIZER(["<bos> a red", "<bos> a blue square"], padding=True)
    ids = tokens["input_ids"].flip(1)  # left-padded, as generate wants
    mask = tokens["attention_mask"].flip(1)
    return lambda: model.generate(ids, mask, max_new_tokens=steps, **kw)


def generate_llava(steps):
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(tiny.LLAVA).eval()
    x = images()
    return lambda: model.generate(x, ["<image> what is it?"] * 2, max_new_tokens=steps)


def generate_dalle(grid):
    """DALL-E writes grid² codes: the steps are the grid."""
    torch.manual_seed(0)
    prior = DALLEPrior(DALLEConfig(codebook_size=16, grid=grid, dim=32, layers=1, heads=2))
    dvae = DVAE(DVAEConfig(image_size=4 * grid, codebook_size=16, code_dim=8, hidden=8))
    pipe = DALLEPipeline(prior, dvae)
    return lambda: pipe(CAPTIONS, guidance_scale=2.0, top_k=4, num_images_per_prompt=2)


def generate_ddpm(steps, scheduler=None, guided=False):
    pipe = DDPMPipeline(tiny_unet(), tiny_unet() if guided else None, scheduler=scheduler)
    w = 2.0 if guided else 1.0
    return lambda: pipe(2, num_inference_steps=steps, guidance_scale=w, return_intermediates=1)


def generate_text_to_image(steps):
    torch.manual_seed(0)
    clip = CLIP(tiny.CLIP).eval()
    pipe = TextToImagePipeline(tiny_unet(cross_attention_dim=clip.config.text_width), clip)
    return lambda: pipe(CAPTIONS, negative_prompt="a green cross", num_inference_steps=steps)


def latent_dit(**kw) -> DiTTransformer2DModel:
    return seeded(DiTTransformer2DModel(DiTConfig(in_channels=4, hidden_size=16, num_layers=1,
                                                  **kw)))  # fmt: skip


def generate_latent(steps):
    torch.manual_seed(0)
    clip = CLIP(tiny.CLIP).eval()
    vae = Autoencoder(TINY_VAE).eval()
    pipe = LatentDiffusionPipeline(vae, latent_dit(cond_dim=tiny.CLIP.embed_dim), clip,
                                   scheduler=DDIMScheduler())  # fmt: skip
    return lambda: pipe(CAPTIONS, num_inference_steps=steps, guidance_scale=2.0)


def generate_flow(steps):
    dit, scheduler = latent_dit(num_classes=4), FlowMatchEulerDiscreteScheduler()
    labels, g = torch.tensor([1, 3]), torch.Generator().manual_seed(0)
    return lambda: sample_loop(lambda x, t: dit(x, t, class_labels=labels), scheduler,
                               (2, 4, 6, 6), steps, g)  # fmt: skip


def generate_gan(steps):
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    return lambda: gan.generate([f"a {c} {s}" for c, s in PAIRS[:2]], seed=steps)


GENERATE = {
    "gpt.generate": generate_gpt,
    "gpt.generate_sampled": lambda n: generate_gpt(n, do_sample=True, top_k=5, seed=0),
    "llava.generate": generate_llava,
    "dalle.pipeline": generate_dalle,
    "ddpm.ddim_autoguided": lambda n: generate_ddpm(n, guided=True),
    "ddpm.ancestral": lambda n: generate_ddpm(n, scheduler=DDPMScheduler()),
    "text_to_image": generate_text_to_image,
    "latent_diffusion": generate_latent,
    "flow.euler": generate_flow,
    "gan.generate": generate_gan,
}


@pytest.mark.parametrize("name", list(GENERATE))
def test_sampling_makes_tensors_on_the_model_device_and_reads_nothing_per_step(name):
    """Under ``torch.device("meta")`` a tensor made without device= lands on meta and is
    flagged; the host reads (syncs on a GPU) must not grow with the number of steps."""
    syncs = {}
    for steps in (2, 4):
        run = GENERATE[name](steps)  # built outside the check: the weights are on the CPU
        _, check = run_checked(run, "cpu", default_device="meta")
        syncs[steps] = check.syncs
    grown = sorted(set(syncs[4]) - set(syncs[2]) | {s for s in syncs[4] if
                   syncs[4].count(s) > syncs[2].count(s)})  # fmt: skip
    assert not grown, "host reads once per step:\n" + "\n".join(grown)
