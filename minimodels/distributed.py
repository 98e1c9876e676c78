"""Data parallelism: N processes train the model that one process would, N times faster.

    torchrun --standalone --nproc_per_node=2 -m minimodels.pretrain clip --steps 30 --out /tmp/c

Every process (a *rank*) holds a full copy of the model. Each step::

    global batch (B) ──► rank r keeps rows [r·B/N, (r+1)·B/N)        `shard`
    forward + backward on its shard ──► local gradients g_r
    all-reduce: every rank gets ḡ = (1/N) Σ_r g_r                     `average_gradients`
    the same optimiser step on every rank ──► the copies stay equal

When the loss is a mean over independent examples, ḡ is exactly the one-process gradient of the
global batch. A contrastive loss is not: every image is scored against *every* text of the
batch, so a rank that only saw its shard would only have B/N negatives. Each rank therefore
gathers the others' embeddings (`gather_features`, as open_clip does), keeping the gradient
path: the backward of all_gather sends each rank the gradient of its own rows from every
loss. `clip_loss_gathered` then scores the rank's own B/N rows against all B columns; the mean
of the N local losses is CLIP's loss of the global batch, and ḡ its gradient.

Processes talk through a backend: gloo on CPUs, NCCL on NVIDIA GPUs. torchrun starts the
processes and tells each its RANK, LOCAL_RANK and WORLD_SIZE in environment variables; with
no torchrun, `init_from_env` does nothing and every function here is the one-process identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from minimodels.clip import clip_loss


def is_distributed() -> bool:
    """Whether this process is one of several (a process group is running)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index, 0 … N−1 (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together, N (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that torchrun set up (nothing to do without it).

    Returns the device this rank trains on: with several CUDA GPUs, rank r's local GPU
    (cuda:LOCAL_RANK); otherwise `device` unchanged. The backend is NCCL for CUDA, else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch, index: int | None = None, count: int | None = None):
    """This rank's rows of a global batch: every tensor (in tuples, lists and dicts, at any
    depth) is cut along dim 0 into `count` equal parts and part `index` is kept.

    Strings, numbers and other leaves pass through. The global batch size must be divisible
    by the number of ranks, so that every rank's loss averages as many examples.
    """
    index = rank() if index is None else index
    count = world_size() if count is None else count
    if count == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch
        if batch.shape[0] % count:
            raise ValueError(
                f"the global batch ({batch.shape[0]} rows) must split evenly over {count} "
                "processes; choose a batch size divisible by --nproc_per_node"
            )
        size = batch.shape[0] // count
        return batch[index * size : (index + 1) * size]
    if isinstance(batch, dict):
        return type(batch)((k, shard(v, index, count)) for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(v, index, count) for v in batch)
    return batch


@torch.no_grad()
def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so all copies start equal."""
    if is_distributed():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params) -> None:
    """ḡ = (1/N) Σ_r g_r for every parameter, in place (what DistributedDataParallel does,
    without its bucketing and its overlap of communication with the backward pass)."""
    if not is_distributed():
        return
    n = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)


def average(value: torch.Tensor) -> float:
    """The mean over ranks of a 0-d tensor (a loss to log), (1/N) Σ_r value_r, as a float."""
    if not is_distributed():
        return value.item()
    t = value.detach().float().clone()  # on the rank's device, as NCCL needs
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / world_size()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, x):  # x (b, E) -> (N·b, E)
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):  # grad (N·b, E): ∂loss_r/∂(all rows), one per rank
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # Σ_r ∂loss_r/∂(all rows)
        b = grad.shape[0] // world_size()
        return grad[rank() * b : (rank() + 1) * b]  # my rows' share (a reduce-scatter)


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of x, in rank order: (b, E) -> (N·b, E), keeping the gradient path.

    The others' rows arrive as copies, but the backward pass returns to every rank the
    gradient that all N losses put on its own rows (open_clip's gather_with_grad).
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def clip_loss_gathered(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE for this rank's b = B/N pairs against the whole global batch.

    image_emb, text_emb: this rank's L2-normalised rows (b, E). With one process it is
    `clip.clip_loss`; with N, (1/N) Σ_r loss_r equals clip_loss over the global batch.
    """
    if not is_distributed():
        return clip_loss(image_emb, text_emb, logit_scale)
    b = image_emb.shape[0]
    all_images, all_texts = gather_features(image_emb), gather_features(text_emb)  # (B, E)
    labels = rank() * b + torch.arange(b, device=image_emb.device)  # my pairs' global columns
    logits_i = logit_scale * image_emb @ all_texts.T  # my images vs every text: (b, B)
    logits_t = logit_scale * text_emb @ all_images.T  # my texts vs every image: (b, B)
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
