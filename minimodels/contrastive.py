"""Two more contrastive losses beside CLIP's: SigLIP's sigmoid loss, and InfoNCE that knows
about false negatives.

`clip_loss` (in ``minimodels/clip.py``) treats every other caption of the batch as a negative.
Two things it gets wrong or pays for:

* **False negatives.** ShapeWorld captions repeat ("a red circle"), and so do web alt-texts.
  When captions j and i are the same text, caption j describes image i as well, yet the
  softmax of row i pushes it away. `clip_loss_multi_positive` either takes such duplicates out
  of the negatives (``mode="mask"``) or spreads the target over all of them (``"spread"``).
* **The softmax couples the whole batch.** Each row's normaliser sums over all n captions, so
  the loss of one pair depends on every other pair. SigLIP (Zhai et al., 2023, "Sigmoid Loss
  for Language Image Pre-Training") scores each of the n² pairs on its own, as a binary
  question "do these match?": `siglip_loss`, the arithmetic of open_clip's ``SigLipLoss``.

    from minimodels.contrastive import siglip_loss, clip_loss_multi_positive, caption_groups
    loss = siglip_loss(image_emb, text_emb, logit_scale=t.exp(), logit_bias=b)
    loss = clip_loss_multi_positive(image_emb, text_emb, t.exp(), caption_groups(captions))

The experiments that compare them (batch size, SigLIP against CLIP, curation) are in
``minimodels/recipes/contrastive.py``. Shape letters: n pairs in a batch, E shared width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from minimodels.checks import check_str, check_strings

# SigLIP's initialisation (the paper's section 3.3): t′ = log 10, so logit_scale = exp(t′) = 10,
# and a bias b = −10. With n − 1 negatives per positive, the loss at the start is dominated by
# negatives; b = −10 makes every pair look like a non-match at first, so the early gradient
# does not have to push n² − n logits down before it can learn anything.
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)  # t′; logit_scale = exp(t′) = 10
SIGLIP_LOGIT_BIAS_INIT = -10.0  # b


def _check_pair(image_emb, text_emb) -> int:
    for name, x in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a float tensor (n, E); got {got}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (n, E) with the same n and E; got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")  # fmt: skip
    return image_emb.shape[0]


# ----------------------------------------------------------------------------------------------
# SigLIP: a sigmoid per pair instead of a softmax per row
# ----------------------------------------------------------------------------------------------


def siglip_logits(image_emb, text_emb, logit_scale, logit_bias) -> torch.Tensor:
    """s_ij = logit_scale · x_i·y_j + logit_bias, (n, n); rows are images, columns captions."""
    return logit_scale * image_emb @ text_emb.T + logit_bias


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, as open_clip's ``SigLipLoss`` computes it.

    image_emb, text_emb: L2-normalised (n, E); row i of each comes from the same pair.
    logit_scale: the already-exponentiated scale exp(t′) (init 10); logit_bias: b (init −10).

        loss = −(1/n) Σ_i Σ_j log σ(z_ij · (logit_scale · x_i·y_j + b)),  z_ij = +1 if i = j else −1

    The sum runs over all n² pairs, and is divided by n (the number of images, as in the paper's
    pseudocode and open_clip), not by n²: each image contributes one positive and n − 1
    negative terms, so the loss grows with the batch.
    """
    n = _check_pair(image_emb, text_emb)
    logits = siglip_logits(image_emb, text_emb, logit_scale, logit_bias)  # (n, n)
    z = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # +1 diagonal, −1 else
    return -F.logsigmoid(z * logits).sum() / n  # −(1/n) Σ_ij log σ(z_ij s_ij)


# ----------------------------------------------------------------------------------------------
# False negatives: captions that repeat within a batch
# ----------------------------------------------------------------------------------------------


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """Group id of each caption (n,), long: equal texts get equal ids, in order of first use.

    ["a red circle", "a blue cross", "a red circle"] -> tensor([0, 1, 0]).
    """
    captions = check_strings(captions, "captions")
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    return torch.tensor([ids[c] for c in captions], dtype=torch.long)


def false_negatives(groups: torch.Tensor) -> int:
    """How many off-diagonal pairs (i, j), i ≠ j, share a caption: the negatives of clip_loss
    that are in fact positives (each duplicate pair counted once per row, so twice in all)."""
    same = groups[:, None] == groups[None, :]  # (n, n) same caption
    return int(same.sum().item() - len(groups))


def clip_loss_multi_positive(
    image_emb, text_emb, logit_scale, groups: torch.Tensor, mode: str = "mask"
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss when some captions of the batch are the same text.

    groups: (n,) ids from `caption_groups`; pairs i ≠ j with groups[i] == groups[j] are false
    negatives (caption j describes image i as well as caption i does). logit_scale = exp(t).

    mode="mask": drop the false negatives from each softmax, keep the diagonal as the target:
        loss_i = −log( e^{s_ii} / (e^{s_ii} + Σ_{j : g_j ≠ g_i} e^{s_ij}) )
    mode="spread": keep every column, and spread the target evenly over the P_i columns that
        share row i's caption: loss_i = −(1/P_i) Σ_{j : g_j = g_i} log softmax(s_i)_j
    Both are averaged over rows (image → text) and columns (text → image), then halved as in
    clip_loss; without duplicates both equal clip_loss exactly. When equal captions also have
    equal embeddings (one text tower, one text), "spread" equals clip_loss too: the softmax
    already shares the row's probability equally between identical columns.
    """
    n = _check_pair(image_emb, text_emb)
    check_str(mode, "mode", ("mask", "spread"))
    if not isinstance(groups, torch.Tensor) or groups.shape != (n,) or groups.is_floating_point():
        got = tuple(groups.shape) if isinstance(groups, torch.Tensor) else type(groups).__name__
        raise ValueError(f"groups must be an integer tensor of shape ({n},); got {got}")
    logits = logit_scale * image_emb @ text_emb.T  # s_ij = exp(t) x_i·y_j: (n, n)
    groups = groups.to(logits.device)
    same = groups[:, None] == groups[None, :]  # (n, n): positives, the diagonal included
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    if mode == "mask":
        hidden = logits.masked_fill(same & ~eye, float("-inf"))  # false negatives leave the sum
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(hidden, labels) + F.cross_entropy(hidden.T, labels)) / 2
    target = same.to(logits.dtype) / same.sum(dim=1, keepdim=True)  # 1/P_i on row i's positives
    loss_i = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()  # image -> text
    loss_t = -(target * logits.T.log_softmax(dim=1)).sum(dim=1).mean()  # text -> image
    return (loss_i + loss_t) / 2
