"""Text-to-image pipelines: a prompt in, images out, called the way diffusers' pipelines are.

    pipe = minimodels.pretrained("ddpm-text")      # or "dit" (latent diffusion) or "dalle"
    images = pipe("a red circle", negative_prompt=None, num_images_per_prompt=4,
                  num_inference_steps=50, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0))      # float (4, 3, H, W) in [0, 1]

A pipeline holds trained models and runs the sampling loop around them; the models' files hold
only their forward passes. Classifier-free guidance is written once, `classifier_free_guidance`,
and serves all of them: the U-Net's and the DiT's noise predictions, DALL-E's next-code logits,
and autoguidance (a weak model in the place of the unconditional one).

* `TextToImagePipeline`: the pixel-space U-Net cross-attending to CLIP's token features.
* `LatentDiffusionPipeline`: a DiT in the latent space of an autoencoder, conditioned on CLIP's
  text embedding; decodes once at the end.
* `DDPMPipeline`: the unconditional U-Net, with autoguidance by a weaker U-Net.
* `DALLEPipeline`: DALL-E's autoregressive prior over dVAE codes, then the dVAE decoder.

The diffusion pipelines share `sample_loop` (minimodels/diffusion.py) and take any scheduler
with diffusers' ``set_timesteps`` / ``timesteps`` / ``step``, set as ``pipe.scheduler``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimodels.checks import (
    check_float,
    check_generator,
    check_images,
    check_instance,
    check_int,
    check_prompts,
    module_device,
)
from minimodels.clip import CLIP
from minimodels.dalle import DALLEPrior
from minimodels.data.images import to_unit
from minimodels.diffusion import DDIMScheduler, DDPMScheduler, sample_loop
from minimodels.dit import DiTTransformer2DModel
from minimodels.dvae import DVAE
from minimodels.latent import Autoencoder
from minimodels.text import Tokenizer
from minimodels.unet import UNet2DModel


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float):
    """ε̂ = ε(∅) + w · (ε(c) − ε(∅))  (Ho & Salimans, 2022).

    w = 1 is the conditional model alone, w = 0 ignores the condition, w > 1 pushes further
    away from the unconditional prediction than the conditional one does. The same line
    guides logits (DALL-E) and, with a weak model's prediction as `uncond`, is autoguidance.
    """
    return uncond + guidance_scale * (cond - uncond)


def _check_call(prompt, negative_prompt, num_images_per_prompt, guidance_scale):
    """The checks every pipeline call shares -> (prompts, negatives or None), each expanded to
    num_images_per_prompt rows per prompt (rows i·n … (i+1)·n − 1 belong to prompt i)."""
    n = check_int(num_images_per_prompt, "num_images_per_prompt", 1, 10_000)
    check_float(guidance_scale, "guidance_scale", 0.0, 50.0)
    prompts = check_prompts(prompt, "prompt")
    negatives = None
    if negative_prompt is not None:
        negatives = check_prompts(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise ValueError(
                f"negative_prompt must be one string or one per prompt ({len(prompts)}); got "
                f"{len(negatives)}"
            )
        negatives = [p for p in negatives for _ in range(n)]
    return [p for p in prompts for _ in range(n)], negatives


class _DiffusionPipeline:
    """What the diffusion pipelines share: checks, guidance and the sampling loop.

    A subclass says how to turn prompts into conditions (`conditions`: dicts of keyword
    arguments of its denoiser, batch first), how to call the denoiser (`denoise`), what shape
    it samples (`sample_shape`) and how to turn samples into images (`decode`).
    """

    scheduler: DDPMScheduler

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        *,
        return_intermediates: int = 0,
        progress: bool = False,
    ):
        """Images float (B, 3, H, W) in [0, 1], B = len(prompts) · num_images_per_prompt.

        ε̂ = ε(x_t, ∅) + w · (ε(x_t, c) − ε(x_t, ∅)), w = guidance_scale; a negative prompt
        takes the place of ∅. generator: None samples from a generator seeded with 0 (the
        same images every call). return_intermediates=k also returns k+1 decoded snapshots
        of x̂_0 along the loop (for a denoising strip).
        """
        if prompt is None:  # no prompt: the condition is ∅ for every image
            prompt = [""] * check_int(num_images_per_prompt, "num_images_per_prompt", 1, 10_000)
            num_images_per_prompt = 1
        prompts, negatives = _check_call(
            prompt, negative_prompt, num_images_per_prompt, guidance_scale
        )
        check_int(num_inference_steps, "num_inference_steps", 1, len(self.scheduler))
        check_int(return_intermediates, "return_intermediates", 0, num_inference_steps)
        generator = check_generator(generator)
        cond, uncond = self.conditions(prompts, negatives)
        w = float(guidance_scale)

        def eps_fn(x, t):
            if w == 1.0:  # no guidance: the conditional branch alone
                return self.denoise(x, t, cond)
            both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}  # one batched call
            eps_cond, eps_uncond = self.denoise(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return classifier_free_guidance(eps_cond, eps_uncond, w)

        shape = (len(prompts), *self.sample_shape)
        out = sample_loop(eps_fn, self.scheduler, shape, num_inference_steps, generator,
                          self.device, return_intermediates, progress)  # fmt: skip
        if return_intermediates:
            return self.decode(out[0]), [self.decode(s) for s in out[1]]
        return self.decode(out)


class TextToImagePipeline(_DiffusionPipeline):
    """Pixel-space text-to-image: CLIP's text tower (frozen) + a conditional U-Net + a scheduler.

    The U-Net cross-attends to the token features of the prompt (as Stable Diffusion attends to
    CLIPTextModel's last_hidden_state); the empty prompt "" is the ∅ it was trained with.
    The default scheduler is DDIM without clip_sample: guidance pushes x̂_0 outside [-1, 1] on
    purpose, and clamping it at every step fights the guidance.
    """

    def __init__(self, unet: UNet2DModel, text_encoder: CLIP, tokenizer=None, scheduler=None):
        self.unet = check_instance(unet, UNet2DModel, "unet")
        self.text_encoder = check_instance(text_encoder, CLIP, "text_encoder").eval()
        c = unet.config
        if c.cross_attention_dim != text_encoder.config.text_width:
            raise ValueError(
                f"unet cross-attends to width {c.cross_attention_dim}, the text encoder gives "
                f"{text_encoder.config.text_width}"
            )
        self.tokenizer = tokenizer or Tokenizer()
        self.scheduler = scheduler or DDIMScheduler(c.num_train_timesteps, c.beta_schedule)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    @torch.no_grad()
    def encode_prompt(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> CLIP's token features (B, L, D) and mask (B, L), True at real tokens,
        on the CPU. L is the longest prompt's; each prompt is encoded once and cached."""
        prompts = check_prompts(prompts, "prompts")
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            length = self.text_encoder.config.context_length
            tok = self.tokenizer(new, padding="max_length", max_length=length)
            feats = self.text_encoder.encode_text_features(tok).cpu()  # (n, L, D)
            for p, f, m in zip(new, feats, tok["attention_mask"]):
                self._cache[p] = (f, m.bool())
        feats = torch.stack([self._cache[p][0] for p in prompts])  # (B, L, D)
        mask = torch.stack([self._cache[p][1] for p in prompts])  # (B, L)
        n = int(mask.sum(1).max())  # drop the all-padding tail
        return feats[:, :n], mask[:, :n]

    def conditions(self, prompts, negatives):
        B = len(prompts)
        feats, mask = self.encode_prompt(prompts + (negatives or [""] * B))  # c, then ∅
        feats, mask = feats.to(self.device), mask.to(self.device)
        cond = {"encoder_hidden_states": feats[:B], "encoder_attention_mask": mask[:B]}
        return cond, {"encoder_hidden_states": feats[B:], "encoder_attention_mask": mask[B:]}

    def denoise(self, x, t, condition):
        return self.unet.eval()(x, t, **condition)

    def decode(self, x):
        return to_unit(x)


class LatentDiffusionPipeline(_DiffusionPipeline):
    """prompt -> CLIP text embedding -> denoise latents with guidance -> decode once.

    ``vae``: the `Autoencoder`; ``denoiser``: a `DiTTransformer2DModel` called on scaled latents
    as ``denoiser(z_t, t, condition=c, drop_condition=...)``, with ∅ its learned null embedding;
    ``text_encoder``: a CLIP whose ``encode_text(tokens, normalize=True)`` gives c.
    """

    def __init__(self, vae, denoiser, text_encoder: CLIP, tokenizer=None, scheduler=None):
        self.vae = check_instance(vae, Autoencoder, "vae")
        self.denoiser = check_instance(denoiser, DiTTransformer2DModel, "denoiser")
        self.text_encoder = check_instance(text_encoder, CLIP, "text_encoder").eval()
        self.tokenizer = tokenizer or Tokenizer()
        self.scheduler = scheduler or DDPMScheduler(1000, "linear")

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.vae.latent_shape

    @torch.no_grad()
    def encode_prompt(self, prompts) -> torch.Tensor:
        """prompt(s) -> the text encoder's unit embedding (B, E)."""
        tokens = self.tokenizer(check_prompts(prompts, "prompts"), padding=True)
        return self.text_encoder.encode_text(tokens, normalize=True).to(self.device)

    def conditions(self, prompts, negatives):
        cond = self.encode_prompt(prompts)  # (B, E)
        uncond = cond if negatives is None else self.encode_prompt(negatives)
        drop = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        # ∅: the learned null embedding (drop_condition), or the negative prompt's embedding
        null = ~drop if negatives is None else drop
        if all(p == "" for p in prompts):  # no prompt at all: sample unconditionally
            drop = null = ~drop
        return (
            {"condition": cond, "drop_condition": drop},
            {"condition": uncond, "drop_condition": null},
        )

    def denoise(self, x, t, condition):
        return self.denoiser.eval()(x, t, **condition)

    def decode(self, z):
        return to_unit(self.vae.decode(self.vae.unscale_latents(z)))  # about [-1, 1] -> [0, 1]


class DDPMPipeline:
    """Unconditional sampling from a U-Net, with autoguidance (Karras et al., 2024).

    ``guide``: a weaker U-Net of the same kind. ε̂ = ε_weak + w (ε − ε_weak), w =
    guidance_scale, at the timesteps lo ≤ t < hi of guidance_interval=(lo, hi) (None: every
    step); w = 1, or no guide, is plain sampling. The default scheduler is DDIM with
    clip_sample (x̂_0 clamped to [-1, 1], diffusers' default).
    """

    def __init__(self, unet: UNet2DModel, guide: UNet2DModel | None = None, scheduler=None):
        self.unet = check_instance(unet, UNet2DModel, "unet")
        c = unet.config
        if guide is not None:
            check_instance(guide, UNet2DModel, "guide")
            g = guide.config
            for name in ("sample_size", "in_channels", "num_train_timesteps", "beta_schedule"):
                if getattr(g, name) != getattr(c, name):
                    raise ValueError(
                        f"guide must denoise the same images with the same schedule: its {name}"
                        f" is {getattr(g, name)!r}, the unet's {getattr(c, name)!r}"
                    )
            if module_device(guide) != module_device(unet):
                raise ValueError(f"guide is on {module_device(guide)}, the unet on {unet.device}")
        self.guide = guide
        self.scheduler = scheduler or DDIMScheduler(
            c.num_train_timesteps, c.beta_schedule, clip_sample=True
        )

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 16,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[int, int] | None = None,
        *,
        return_intermediates: int = 0,
        progress: bool = False,
    ):
        """batch_size images float (B, 3, H, W) in [0, 1]; see the class for autoguidance."""
        B = check_int(batch_size, "batch_size", 1, 10_000)
        check_int(num_inference_steps, "num_inference_steps", 1, len(self.scheduler))
        w = check_float(guidance_scale, "guidance_scale", 0.0, 50.0)
        T = self.unet.config.num_train_timesteps
        if w != 1.0 and self.guide is None:
            raise ValueError(f"guidance_scale={w:g} needs a guide (a weaker U-Net)")
        if guidance_interval is None:
            lo, hi = 0, T
        else:
            if not isinstance(guidance_interval, (tuple, list)) or len(guidance_interval) != 2:
                raise TypeError(f"guidance_interval must be (lo, hi) or None; got "
                                f"{guidance_interval!r}")  # fmt: skip
            lo, hi = (check_int(v, "guidance_interval", 0, T) for v in guidance_interval)
            if lo >= hi:
                raise ValueError(f"guidance_interval (lo, hi) needs lo < hi; got ({lo}, {hi})")
        generator = check_generator(generator)
        unet, guide = self.unet.eval(), self.guide.eval() if self.guide is not None else None
        self.scheduler.set_timesteps(num_inference_steps)
        # whether each step is guided, decided before the loop (no host sync inside it)
        guided = iter([guide is not None and w != 1.0 and lo <= t < hi
                       for t in self.scheduler.timesteps.tolist()])  # fmt: skip

        def eps_fn(x, t):
            eps = unet(x, t)
            if not next(guided):
                return eps
            return classifier_free_guidance(eps, guide(x, t), w)  # ε_weak + w (ε − ε_weak)

        c = unet.config
        shape = (B, c.in_channels, c.sample_size, c.sample_size)
        out = sample_loop(eps_fn, self.scheduler, shape, num_inference_steps, generator,
                          unet.device, return_intermediates, progress)  # fmt: skip
        if return_intermediates:
            return to_unit(out[0]), [to_unit(s) for s in out[1]]
        return to_unit(out)


class DALLEPipeline:
    """DALL-E: the tokenizer, the prior (stage 2) writing image codes, the dVAE decoder (stage 1).

        pipe = DALLEPipeline(prior, dvae)              # or minimodels.pretrained("dalle")
        images = pipe(["a red circle"], num_images_per_prompt=8, top_k=32,
                      generator=torch.Generator().manual_seed(0))     # (8, 3, 32, 32) in [0, 1]
        best_first = pipe.rerank(images, "a red circle", clip)        # indices (8,)

    Codes are sampled one at a time in raster order, each from softmax(logits / temperature)
    over the K codes (only the top_k most likely when top_k is set). With guidance_scale w ≠ 1
    each step runs the prompt and ∅ (the empty prompt, or the negative prompt) side by side and
    samples from guided logits ℓ(∅) + w (ℓ(c) − ℓ(∅)).
    """

    def __init__(self, prior: DALLEPrior, dvae: DVAE, tokenizer=None):
        self.prior = check_instance(prior, DALLEPrior, "prior").eval()
        self.dvae = check_instance(dvae, DVAE, "dvae").eval()
        pc, dc = prior.config, dvae.config
        if pc.codebook_size != dc.codebook_size or pc.grid != dc.grid:
            raise ValueError(
                f"prior and dVAE disagree: prior K={pc.codebook_size}, grid={pc.grid}; "
                f"dVAE K={dc.codebook_size}, grid={dc.grid}"
            )
        self.tokenizer = tokenizer or Tokenizer()

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        return_codes: bool = False,
    ):
        """Images float (B, 3, H, W) in [0, 1], grouped by prompt (B = prompts · n). There is
        no num_inference_steps: the prior always writes grid² codes, one per step."""
        prompts, negatives = _check_call(
            prompt, negative_prompt, num_images_per_prompt, guidance_scale
        )
        check_float(temperature, "temperature", 0.0, 100.0, min_inclusive=False)
        if top_k is not None:
            check_int(top_k, "top_k", 1)
        generator = check_generator(generator)
        if negatives is None and guidance_scale != 1.0:
            negatives = [""] * len(prompts)
        codes = torch.cat([
            self.sample_codes(prompts[s : s + 256], negatives and negatives[s : s + 256],
                              guidance_scale, temperature, top_k, generator)
            for s in range(0, len(prompts), 256)
        ])  # fmt: skip
        images = self.dvae.decode(codes).cpu()  # (B, 3, H, W) in [0, 1]
        return (images, codes.cpu()) if return_codes else images

    def sample_codes(self, prompts, negatives, guidance_scale, temperature, top_k, generator):
        """Image codes (B, grid, grid), one code at a time with the prior's KV cache."""
        prior, c = self.prior, self.prior.config
        B, K = len(prompts), c.codebook_size
        guided = negatives is not None and guidance_scale != 1.0
        text = prior.text_tokens(prompts + negatives if guided else prompts)
        soi = torch.full((len(text), 1), self.tokenizer.soi_token_id, dtype=torch.long,
                         device=text.device)  # fmt: skip
        step_in = torch.cat([text, soi], 1).to(prior.device)  # (B or 2B, L + 1)
        cache: list = []
        codes = []
        for _ in range(c.grid**2):
            logits = prior.forward_cached(step_in, cache)[:, -1, c.text_vocab_size :]  # (·, K)
            if guided:
                logits = classifier_free_guidance(logits[:B], logits[B:], guidance_scale)
            logits = logits / temperature
            if top_k is not None and top_k < K:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            # drawn on the generator's device: a CPU generator costs a small copy per step, a
            # generator on the prior's device keeps the whole loop there
            probs = logits.softmax(-1).to(generator.device)  # (B, K)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            codes.append(nxt)
            step_in = nxt.to(prior.device) + c.text_vocab_size
            if guided:
                step_in = torch.cat([step_in, step_in])  # both rows get the same code
        return torch.cat(codes, 1).view(B, c.grid, c.grid)

    @torch.no_grad()
    def rerank(self, images, prompt: str, clip: CLIP) -> torch.Tensor:
        """Indices of candidate `images` ordered by CLIP similarity to `prompt`, best first
        (DALL-E drew 512 samples and kept the ones CLIP liked best)."""
        check_instance(clip, CLIP, "clip")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string; got {prompt!r}")
        x = clip_images(check_images(images, "images"), clip.config.image_size)
        image_emb = clip.eval().encode_image(x, normalize=True)  # (N, E)
        text_emb = clip.encode_text(self.tokenizer([prompt]), normalize=True)  # (1, E)
        return (image_emb @ text_emb.T).squeeze(1).argsort(descending=True).cpu()


def clip_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images float (N, 3, H, W) in [0, 1] -> CLIP's size (bilinear, antialiased)."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.clamp(0, 1)
