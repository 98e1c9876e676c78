"""Recipe of ViLT (interim: the code still lives in minimodels/vilt.py)."""

from minimodels import vilt


def load_vilt(device=None):
    return vilt.load_pretrained(device=device)


def pretrain_vilt(steps: int, seed: int, device=None):
    return vilt.train_vilt(steps=steps, seed=seed, device=device)


def evaluate_vilt(seed: int = 0, n: int = 1000, device=None) -> dict:
    raise NotImplementedError("evaluate vilt: to be written")
