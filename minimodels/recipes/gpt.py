"""Recipe of the GPT (interim: the code still lives in minimodels/gpt.py)."""

from minimodels import gpt


def load_gpt(device=None):
    return gpt.load_pretrained(device=device)


def pretrain_gpt(steps: int, seed: int, device=None):
    return gpt.train_gpt(steps=steps, seed=seed, device=device)


def evaluate_gpt(seed: int = 0, n: int = 500, device=None) -> dict:
    return gpt.evaluate_gpt(load_gpt(device), seed=seed, n=n)
