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

from minimodels.checks import check_device, check_finite

__all__ = [
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "count_parameters",
    "print_trainable_parameters",
]


def _check_rank_alpha(r, alpha) -> None:
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r must be a positive int (the rank); got {r!r} ({type(r).__name__})")
    if r < 1:
        raise ValueError(f"r must be a positive int (the rank); got {r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a positive number; got {alpha!r} ({type(alpha).__name__})")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number; got {alpha}")


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
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear; got {type(base).__name__}")
        _check_rank_alpha(r, alpha)
        if r > min(base.in_features, base.out_features):
            raise ValueError(
                f"r must be at most min(in_features, out_features) = "
                f"{min(base.in_features, base.out_features)} for this layer "
                f"({base.in_features} → {base.out_features}); got r={r}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"dropout must be a float in [0, 1); got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); got {dropout}")
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (..., {self.in_features}); got {type(x)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
        check_device(x, "x", self.lora_A.weight.device)
        check_finite(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}; "
                f"got shape {tuple(x.shape)}"
            )
        y = self.base_layer(x)  # W x + b: (..., d_out)
        h = self.lora_A(self.lora_dropout(x))  # A x: (..., r), the low-rank bottleneck
        out = y + self.lora_B(h) * self.scaling  # y = W x + b + (alpha/r) · B A x
        if not torch.isfinite(out).all():
            raise ValueError(f"x holds values too large for {x.dtype}: the layer overflowed")
        return out

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules is not a valid regular expression: {err}") from err
    elif isinstance(target_modules, Sequence) and all(isinstance(t, str) for t in target_modules):
        if len(target_modules) == 0:
            raise ValueError("target_modules must name at least one module; got an empty list")
    else:
        raise TypeError(
            "target_modules must be a list of module names or a regex string; "
            f"got {target_modules!r}"
        )
    _check_rank_alpha(r, alpha)
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters, as peft's ``get_nb_trainable_parameters``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """Print (and return) trainable and total parameter counts, in peft's format."""
    trainable, total = count_parameters(model)
    pct = 100 * trainable / max(total, 1)
    print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {pct:.4f}")
    return trainable, total
