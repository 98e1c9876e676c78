"""Recipe of the dVAE (interim: the code still lives in minimodels/dalle.py)."""

from minimodels import dalle


def load_dvae(device=None):
    return dalle.load_dvae(device=device)


def pretrain_dvae(steps: int, seed: int, device=None):
    config = dalle.DVAEConfig(codebook_size=128, hidden=32, downsample=2)
    return dalle.train_dvae(steps=steps, batch_size=32, seed=seed, config=config, beta=0.0,
                            diversity=0.05, device=device)  # fmt: skip


def evaluate_dvae(seed: int = 0, n: int = 1000, device=None) -> dict:
    return dalle.evaluate_dvae(load_dvae(device), seed=seed, n=n)
