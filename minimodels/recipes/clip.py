"""Recipe of CLIP (interim: the code still lives in minimodels/clip.py)."""

from minimodels import clip


def load_clip(device=None):
    return clip.load_pretrained(device=device)


def pretrain_clip(steps: int, seed: int, device=None):
    return clip.train_clip(
        steps=steps, batch_size=128, seed=seed, config=clip.CLIPConfig(patch_size=2),
        short_captions=0.5, device=device,
    )  # fmt: skip


def evaluate_clip(seed: int = 0, n: int = 1000, device=None) -> dict:
    return clip.evaluate_clip(load_clip(device), seed=seed, n=n)
