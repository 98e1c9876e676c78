"""Recipe of the judge (interim: the code still lives in minimodels/judge.py)."""

from minimodels import judge


def load_judge(device=None):
    return judge.load_pretrained(device=device)


def pretrain_judge(steps: int, seed: int, device=None):
    return judge.train_judge(steps=steps, seed=seed, device=device)


def evaluate_judge(seed: int = 0, n: int = 1000, device=None) -> dict:
    return judge.evaluate_judge(load_judge(device), seed=seed, n=n)
