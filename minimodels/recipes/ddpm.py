"""Recipe of the pixel-space U-Nets (interim: the code still lives in minimodels/unet.py)."""

from minimodels import unet


def load_ddpm(device=None):
    return unet.load_pretrained(device)


def load_ddpm_weak(device=None):
    return unet.load_pretrained_weak(device)


def load_ddpm_text(device=None):
    return unet.load_pretrained_text(device)


def _unconditional_unet(steps: int, seed: int, snr_gamma: float, device=None):
    config = unet.UNetConfig(beta_schedule="cosine", sample_size=24)
    return unet.train_unet(steps=steps, batch_size=24, seed=seed, lr=2e-3, config=config,
                           snr_gamma=snr_gamma, device=device)  # fmt: skip


def pretrain_ddpm(steps: int, seed: int, device=None):
    return _unconditional_unet(steps, seed, snr_gamma=5.0, device=device)


def pretrain_ddpm_weak(steps: int, seed: int, device=None):
    return _unconditional_unet(steps, seed, snr_gamma=2.0, device=device)


def pretrain_ddpm_text(steps: int, seed: int, device=None):
    config = unet.UNetConfig(beta_schedule="cosine", cross_attention_dim=64)
    return unet.train_unet(steps=steps, batch_size=32, seed=seed, lr=2e-3, config=config,
                           text=True, device=device)  # fmt: skip


def evaluate_ddpm(seed: int = 0, n: int = 256, device=None) -> dict:
    return unet.evaluate_ddpm(load_ddpm(device), load_ddpm_text(device), seed=seed, n=n,
                              guide_model=load_ddpm_weak(device))  # fmt: skip


def evaluate_ddpm_weak(seed: int = 0, n: int = 256, device=None) -> dict:
    raise NotImplementedError("evaluate ddpm-weak: to be written")


def evaluate_ddpm_text(seed: int = 0, n: int = 256, device=None) -> dict:
    raise NotImplementedError("evaluate ddpm-text: to be written")
