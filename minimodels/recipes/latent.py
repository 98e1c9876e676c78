"""Recipe of latent diffusion (interim: the code still lives in minimodels/latent.py)."""

from minimodels import clip, latent


def load_latent(device=None):
    return latent.load_pretrained(device)


def load_dit(device=None):
    return latent.load_pipeline(device=device)


def pretrain_latent(steps: int, seed: int, device=None):
    return latent.train_autoencoder(n_images=steps, seed=seed, device=device)


def pretrain_dit(steps: int, seed: int, device=None):
    vae, clip_model = latent.load_pretrained(device), clip.load_pretrained(device=device)
    return latent.train_latent_dit(vae, clip_model, steps=steps, seed=seed, device=device)


def evaluate_latent(seed: int = 0, n: int = 256, device=None) -> dict:
    raise NotImplementedError("evaluate latent: to be written")


def evaluate_dit(seed: int = 0, n: int = 256, device=None) -> dict:
    raise NotImplementedError("evaluate dit: to be written")
