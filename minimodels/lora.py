"""LoRA: fine-tune a frozen weight matrix through a low-rank update.

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models". A frozen linear layer
y = W x + b (W is d_out × d_in) gets a trainable detour through a narrow bottleneck of rank r::

    y = W x + b + (alpha / r) · B A x          A: r × d_in (random),  B: d_out × r (zero)

so the fine-tuned weight is W* = W + (alpha / r) · B A. Only A and B train: r · (d_in + d_out)
numbers instead of d_in · d_out. B = 0 at initialisation, so the adapted model starts out
computing exactly what the frozen one did. After training, `merge()` folds B A into W and the
detour disappears: no extra cost at inference.

The names follow Hugging Face peft, so the parameters line up one to one::

    peft                                   minimodels.lora
    LoraConfig(r, lora_alpha, ...)         apply_lora(model, target_modules, r, alpha)
    get_peft_model(model, config)          (same call: wraps matching nn.Linear in place)
    layer.base_layer, lora_A, lora_B       LoRALinear.base_layer, .lora_A, .lora_B
    model.print_trainable_parameters()     print_trainable_parameters(model)
    model.merge_and_unload()               merge_lora(model)

Shape letters: B batch (leading dims), d_in / d_out the layer's widths, r the rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn

from minimodels.checks import check_float, check_instance, check_int, check_strings

__all__ = [
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "count_parameters",
    "print_trainable_parameters",
]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (peft's ``lora.Linear``).

        y = W x + b + (alpha / r) · B A dropout(x)

    Args:
        base: the ``nn.Linear`` to adapt. Its weight and bias are frozen (requires_grad=False)
            and shared, not copied.
        r: rank of the update (1 ≤ r ≤ min(d_in, d_out)).
        alpha: scale; the update is multiplied by ``scaling = alpha / r``, so changing r does not
            change the size of the first steps much (the original paper's choice).
        dropout: dropout on the input of the LoRA branch only (peft's ``lora_dropout``).

    A is initialised like peft (Kaiming-uniform with a = √5, the default of ``nn.Linear``), B
    with zeros, so at initialisation the output equals ``base(x)`` exactly.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0, dropout: float = 0.0):
        super().__init__()
        check_instance(base, nn.Linear, "base")
        check_int(r, "r (the rank)", 1, min(base.in_features, base.out_features))
        check_float(alpha, "alpha", 0.0, min_inclusive=False)
        check_float(dropout, "dropout", 0.0, 1.0, max_inclusive=False)
        self.base_layer = base
        for p in self.base_layer.parameters():
            p.requires_grad_(False)  # W and b stay frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r  # alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=√5) (as peft), B = 0: the update B A starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"

    @property
    def weight(self) -> torch.Tensor:
        """The frozen W (d_out, d_in), so code that reads `layer.weight` keeps working."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha / r) · B A, shape (d_out, d_in): the update LoRA has learnt."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (d_out, r)@(r, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # W x + b: (..., d_out)
        h = self.lora_A(self.lora_dropout(x))  # A x: (..., r), the low-rank bottleneck
        return y + self.lora_B(h) * self.scaling  # y = W x + b + (alpha/r) · B A x

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W* = W + (alpha/r) · B A and the same bias (a new layer)."""
        base = self.base_layer
        merged = nn.Linear(
            self.in_features,
            self.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        merged.weight.copy_(base.weight + self.delta_weight())  # W* = W + (alpha/r) · B A
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged


# ----------------------------------------------------------------------------------------------
# Whole models: inject LoRA by name, count what trains, merge back
# ----------------------------------------------------------------------------------------------


def _matches(name: str, target_modules) -> bool:
    """peft's rule: a list matches when the module name ends with one of its entries (a whole
    dotted component); a string is a regular expression that must match the full name."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def apply_lora(
    model: nn.Module,
    target_modules: str | Sequence[str],
    r: int = 4,
    alpha: float = 8.0,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> nn.Module:
    """Replace every ``nn.Linear`` whose name matches `target_modules` by a `LoRALinear`.

    Like ``peft.get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha,
    target_modules=target_modules))`` but in place, without a wrapper class:

    * `target_modules` a list, e.g. ``["q_proj", "v_proj"]``: layers whose dotted name ends
      with one of these; or a string: a regular expression matched against the full name.
    * With ``freeze_base=True`` every other parameter of the model is frozen first, so only the
      LoRA matrices train (peft's default). Returns the model.

    Raises ValueError if nothing matches (a typo in a name would otherwise train nothing).
    """
    check_instance(model, nn.Module, "model")
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules is not a valid regular expression: {err}") from err
    else:
        target_modules = check_strings(target_modules, "target_modules (names or a regex)")
    check_int(r, "r (the rank)", 1)
    check_float(alpha, "alpha", 0.0, min_inclusive=False)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, target_modules)
    ]
    if not targets:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(linears[:8]) + (" …" if len(linears) > 8 else "")
        raise ValueError(
            f"target_modules={target_modules!r} matched no nn.Linear in the model; "
            f"its linear layers are: {shown or '(none)'}"
        )
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` in `model` by its merged ``nn.Linear`` (peft's
    ``merge_and_unload``), in place; returns the model. Outputs stay the same."""
    check_instance(model, nn.Module, "model")
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters, as peft's ``get_nb_trainable_parameters``."""
    check_instance(model, nn.Module, "model")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """Print (and return) trainable and total parameter counts, in peft's format."""
    trainable, total = count_parameters(model)
    pct = 100 * trainable / max(total, 1)
    print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {pct:.4f}")
    return trainable, total
