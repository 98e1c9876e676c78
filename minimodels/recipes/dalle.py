"""Recipe of the DALL-E prior (interim: the code still lives in minimodels/dalle.py)."""

from minimodels import clip, dalle, judge


def load_dalle(device=None):
    return dalle.load_pretrained(device=device)


def pretrain_dalle(steps: int, seed: int, device=None):
    return dalle.train_prior(dalle.load_dvae(device=device), steps=steps, batch_size=32,
                             seed=seed, n_data=20_000, device=device)  # fmt: skip


def evaluate_dalle(seed: int = 0, n: int = 200, device=None) -> dict:
    pipe, reader = load_dalle(device), judge.load_pretrained(device=device)
    return dalle.evaluate_dalle(pipe, reader, clip.load_pretrained(device=device), seed=seed, n=n)
