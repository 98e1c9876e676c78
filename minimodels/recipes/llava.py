"""Recipe of LLaVA (interim: the code still lives in minimodels/llava.py)."""

from minimodels import llava


def load_llava(device=None):
    return llava.load_pretrained(device=device)


def pretrain_llava(steps: int, seed: int, device=None):
    model, stage1, blind, history = llava.train_llava(
        stage1_steps=steps // 5, stage2_steps=steps, blind_steps=steps // 3, seed=seed,
        n_scenes=20_000, config_kwargs={"pool_mode": "unshuffle"}, device=device,
    )  # fmt: skip
    llava.save_companions(stage1, blind, command=f"python -m minimodels.pretrain llava --steps "
                          f"{steps} --seed {seed}")  # fmt: skip
    return model, history


def evaluate_llava(seed: int = 0, n: int = 500, device=None) -> dict:
    model, stage1 = load_llava(device), llava.load_pretrained(device, name="llava_stage1")
    return llava.evaluate_llava(model, stage1, llava.load_blind(device), seed=seed, n=n)
