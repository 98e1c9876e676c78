"""LoRA: the maths (B = 0 at init, W* = W + (alpha/r) BA), agreement with peft, bad input."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from minimodels.layers import TransformerBlock
from minimodels.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    merge_lora,
    print_trainable_parameters,
)


class TwoBlocks(nn.Module):
    """A tiny stand-in for a language model: attention layers named q_proj, k_proj, ..."""

    def __init__(self, dim=16):
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(dim, 4, mlp_ratio=2.0) for _ in range(2)])
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.head(x)


def randomise_lora(model, seed=0):
    """Give every B a non-zero value, so the tests see the update (B = 0 would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_linear_starts_as_base_and_trains_only_a_b():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = LoRALinear(base, r=3, alpha=6)
    x = torch.randn(4, 5, 12)
    assert torch.equal(lora(x), base(x))  # B = 0: the update starts at exactly zero
    assert torch.count_nonzero(lora.lora_A.weight) > 0  # A random
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == [
        "lora_A.weight",
        "lora_B.weight",
    ]
    assert lora.scaling == 2.0
    randomise_lora(lora)
    delta = lora.lora_B.weight @ lora.lora_A.weight * (6 / 3)
    expected = x @ (base.weight + delta).T + base.bias  # y = (W + (alpha/r) BA) x + b
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-6)
    assert torch.linalg.matrix_rank(lora.delta_weight()) <= 3


def test_merge_gives_identical_outputs_and_plain_linear():
    torch.manual_seed(1)
    lora = LoRALinear(nn.Linear(10, 8), r=2, alpha=4)
    randomise_lora(lora)
    merged = lora.merge()
    assert type(merged) is nn.Linear
    x = torch.randn(6, 10)
    torch.testing.assert_close(merged(x), lora(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(merged.weight, lora.base_layer.weight)  # the update is in W*


def test_gradients_reach_only_lora_and_training_changes_output():
    torch.manual_seed(2)
    model = TwoBlocks()
    frozen = copy.deepcopy(model)
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    x, target = torch.randn(3, 6, 16), torch.randn(3, 6, 5)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    frozen_now = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    for name, p in frozen.named_parameters():
        key = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        assert torch.equal(frozen_now[key], p), f"{name} changed but should be frozen"
    assert not torch.allclose(model(x), frozen(x), atol=1e-4)


def test_agrees_with_peft_on_the_same_weights():
    peft = pytest.importorskip("peft")
    torch.manual_seed(3)
    model = TwoBlocks()
    ref = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "mlp.0"]),
    )
    ours = apply_lora(copy.deepcopy(model), ["q_proj", "v_proj", "mlp.0"], r=4, alpha=8)
    names_ref = {n for n, p in ref.named_parameters() if p.requires_grad}
    names_ours = {n for n, p in ours.named_parameters() if p.requires_grad}
    # peft calls them base_model.model.<name>.lora_A.default.weight; ours <name>.lora_A.weight
    strip = {n.removeprefix("base_model.model.").replace(".default", "") for n in names_ref}
    assert strip == names_ours, sorted(strip ^ names_ours)
    assert count_parameters(ours) == tuple(ref.get_nb_trainable_parameters())
    # same A and B in both (B random, so the update is not zero)
    randomise_lora(ours, seed=4)
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_" in n:
                key = "base_model.model." + n.replace("lora_A.", "lora_A.default.").replace(
                    "lora_B.", "lora_B.default."
                )
                ref_params[key].copy_(p)
    x = torch.randn(2, 7, 16)
    out_ref, out_ours = ref(x), ours(x)
    assert not torch.allclose(out_ours, model(x), atol=1e-4)  # LoRA changed something
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-5, atol=1e-6)
    merged_ref = ref.merge_and_unload()
    merged_ours = merge_lora(ours)
    assert not any(isinstance(m, LoRALinear) for m in merged_ours.modules())
    torch.testing.assert_close(merged_ours(x), merged_ref(x), rtol=1e-5, atol=1e-6)
    # peft's initialisation of A: the same Kaiming-uniform bound 1/√d_in
    bound = 1 / math.sqrt(16)
    a = LoRALinear(nn.Linear(16, 16), r=4).lora_A.weight
    assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound


def test_trainable_parameter_count_and_print(capsys):
    model = TwoBlocks(dim=16)
    total_before = sum(p.numel() for p in model.parameters())
    apply_lora(model, r"blocks\.\d+\.attn\.(q_proj|v_proj)", r=2)  # a regex, as peft allows
    trainable, total = print_trainable_parameters(model)
    assert trainable == 2 * 2 * 2 * (16 + 16)  # 2 blocks × (q, v) × r·(d_in + d_out)
    assert total == total_before + trainable
    assert "trainable params: 256 || all params" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        ({"base": nn.Conv1d(3, 3, 1)}, TypeError, "base must be a Linear"),
        ({"r": 0}, ValueError, "r (the rank) must be at least 1"),
        ({"r": 2.0}, TypeError, "r (the rank) must be an int"),
        ({"r": 9}, ValueError, "r (the rank) must be at most 8"),  # min(d_in, d_out)
        ({"alpha": -1}, ValueError, "alpha must be in (0.0, inf]"),
        ({"dropout": 1.0}, ValueError, "dropout must be in [0.0, 1.0)"),
    ],
)
def test_bad_arguments(kwargs, err, words):
    args = {"base": nn.Linear(8, 10), "r": 2, "alpha": 4, **kwargs}
    with pytest.raises(err) as info:
        LoRALinear(**args)
    assert words in str(info.value)


def test_bad_targets():
    with pytest.raises(ValueError, match="matched no nn.Linear.*q_proj"):
        apply_lora(TwoBlocks(), ["query"])
    with pytest.raises(TypeError, match="target_modules"):
        apply_lora(TwoBlocks(), 3)
    with pytest.raises(ValueError, match="empty"):
        apply_lora(TwoBlocks(), [])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        apply_lora(TwoBlocks(), "q_proj(")
    with pytest.raises(TypeError, match="model must be a Module"):
        merge_lora("a model")
