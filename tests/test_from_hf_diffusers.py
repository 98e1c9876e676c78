"""Our schedulers and sample_loop drive a diffusers UNet2DModel as it is: built from the model's
diffusers scheduler config, they give diffusers' DDIMPipeline and DDPMPipeline images for the
same generator (on a tiny random U-Net, offline); a config they cannot follow is refused."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from minimodels.diffusion import DDIMScheduler, DDPMScheduler, sample_loop  # noqa: E402

TOL = 1e-4  # max |ours − theirs| of the images in [0, 1]
# google/ddpm-cifar10-32's scheduler_config.json (a DDPM config; DDIMPipeline converts it)
CIFAR_CONFIG = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
    "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small",
}  # fmt: skip
VARIANTS = {
    "cifar": {},
    "cosine, offset, alpha_0": {"beta_schedule": "squaredcos_cap_v2", "steps_offset": 1,
                                "set_alpha_to_one": False},
    "range, offset": {"clip_sample_range": 0.5, "beta_end": 0.012, "steps_offset": 3},
    "no clip": {"clip_sample": False},  # x̂_0 of a random U-Net unclamped: images saturate
}  # fmt: skip


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()  # fmt: skip


def theirs(pipeline_cls, unet, config, steps=10, seed=0):
    pipe = pipeline_cls(unet, diffusers.DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    images = pipe(batch_size=2, generator=g, num_inference_steps=steps, output_type="pt").images
    if not isinstance(images, torch.Tensor):  # diffusers before "pt": numpy, channels last
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    return pipe, images


def ours(scheduler, unet, steps=10, seed=0):
    """What a notebook cell writes: the diffusers model as eps_fn, our scheduler, our loop."""
    x = sample_loop(unet, scheduler, (2, 3, 8, 8), steps, torch.Generator().manual_seed(seed))
    return (x / 2 + 0.5).clamp(0, 1)  # diffusers' final rescale to [0, 1]


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_initial_noise_is_diffusers_randn_tensor():
    shape = (2, 3, 8, 8)
    a = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # what sample_loop draws
    b = randn_tensor(shape, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ddim_sampling_matches_diffusers_ddim_pipeline(unet, variant):
    config = {**CIFAR_CONFIG, **VARIANTS[variant]}
    pipe, ref = theirs(diffusers.DDIMPipeline, unet, config)
    # from the DDPM config (as the pipeline converts it), and from the converted DDIM config
    for c in (config, pipe.scheduler.config):
        scheduler = DDIMScheduler.from_config(c)
        assert scheduler.clip_sample == config["clip_sample"]
        images = ours(scheduler, unet)
        assert scheduler.timesteps.tolist() == pipe.scheduler.timesteps.tolist()
        assert max_diff(images, ref) <= TOL
    if config["clip_sample"]:  # not all clamped to 0 or 1: a real comparison
        assert ((ref > 0) & (ref < 1)).float().mean() > 0.5
    other = ours(DDIMScheduler.from_config(config), unet, seed=1)
    assert max_diff(other, ref) > 0.1  # ... that another seed fails


@pytest.mark.parametrize("variant", VARIANTS)
def test_ddpm_sampling_matches_diffusers_ddpm_pipeline(unet, variant):
    # the same draws in the same order: x_T, then one z per step with t > 0 (fixed_small)
    config = {**CIFAR_CONFIG, **VARIANTS[variant]}
    _, ref = theirs(diffusers.DDPMPipeline, unet, config, steps=8)
    images = ours(DDPMScheduler.from_config(config), unet, steps=8)
    assert max_diff(images, ref) <= TOL


def test_from_config_reads_diffusers_defaults_and_keys():
    # a missing key takes diffusers' default (clip_sample=True); our own default is unchanged
    assert DDPMScheduler.from_config({}).clip_sample and not DDPMScheduler().clip_sample
    ref = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=False,
                                  steps_offset=1, clip_sample_range=2.0)  # fmt: skip
    s = DDIMScheduler.from_config(ref.config)
    assert (s.steps_offset, s.clip_sample_range, s.beta_schedule) == (1, 2.0, "cosine")
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=1e-6)
    assert s.final_alpha_cumprod == ref.final_alpha_cumprod == ref.alphas_cumprod[0]
    s.set_timesteps(7), ref.set_timesteps(7)
    assert s.timesteps.tolist() == ref.timesteps.tolist()
    # a DDPM config's variance_type is DDPM's business: DDIM ignores it, as diffusers' does
    DDIMScheduler.from_config({**CIFAR_CONFIG, "variance_type": "fixed_large"})


@pytest.mark.parametrize(
    "cls, key, value",
    [
        (DDIMScheduler, "prediction_type", "v_prediction"),
        (DDIMScheduler, "timestep_spacing", "trailing"),
        (DDIMScheduler, "thresholding", True),
        (DDIMScheduler, "rescale_betas_zero_snr", True),
        (DDIMScheduler, "trained_betas", [1e-4] * 1000),
        (DDIMScheduler, "beta_schedule", "scaled_linear"),
        (DDPMScheduler, "variance_type", "fixed_large"),
        (DDPMScheduler, "steps_offset", -1),
    ],
)
def test_from_config_refuses_what_it_cannot_follow(cls, key, value):
    with pytest.raises(ValueError, match=key):
        cls.from_config({**CIFAR_CONFIG, key: value})


def test_bad_new_arguments_raise():
    with pytest.raises(TypeError, match="set_alpha_to_one"):
        DDIMScheduler(set_alpha_to_one="yes")
    with pytest.raises(ValueError, match="steps_offset"):
        DDPMScheduler(10, steps_offset=10)
