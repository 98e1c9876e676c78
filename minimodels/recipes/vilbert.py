"""Recipe of ViLBERT (interim: the code still lives in minimodels/vilbert.py)."""

from minimodels import clip, vilbert, vilt


def load_vilbert(device=None):
    return vilbert.load_pretrained(device=device)


def pretrain_vilbert(steps: int, seed: int, device=None):
    return vilbert.train_vilbert(steps=steps, vqa_steps=steps // 2, seed=seed, device=device)


def evaluate_vilbert(seed: int = 0, n: int = 1000, device=None) -> dict:
    model, clip_model = load_vilbert(device), clip.load_pretrained(device=device)
    out = vilbert.evaluate_vilbert(model, seed, n, clip_model, vilt.load_pretrained(device=device))
    out["retrieval"] = vilbert.retrieval_timing(model, clip_model, gallery=1000, seed=seed)
    return out
