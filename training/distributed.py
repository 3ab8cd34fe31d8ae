"""Differentiable all-gather for contrastive losses, on the public ``torch.distributed`` API.

ALTA's global and local losses take their negatives from every process: each rank gathers the image and text
features of all ranks and computes the loss over the global batch. ``accelerator.gather`` cannot be used for that:
its result carries no gradient when there are several processes (and *does* when there is one, which hides the bug).
``torch.distributed.nn.functional.all_gather`` is deprecated, and the autograd-aware functional collectives are
private, so this module keeps its own small autograd Function.

Gradient convention. In the forward every rank receives the same gathered tensor. In the backward each rank holds
the gradient of *its* loss with respect to every rank's slice; the slices are summed over ranks (``all_reduce``) and
each rank keeps its own. Under DDP, which then **averages** parameter gradients over ranks, this gives exactly the
gradient of the mean of the per-rank losses. When every rank computes the same full-batch loss (ALTA's recipe,
labels ``0..N-1`` over the gathered batch) that is the single-process gradient on the concatenated batch;
``tests/training/test_distributed_gather.py`` checks it with two real processes.

Shape requirement. ``all_gather`` needs the **same shape on every rank**: the first (batch) dimension must be
equal (use ``drop_last=True``; an uneven last batch raises a ``ValueError`` naming the shapes), and so must the
other dimensions. Variable-length tensors (the local loss's padded word features ``[B, L, D]`` with per-sample
``cap_lens``) are first padded to the largest length of any rank with :func:`pad_to_global_max`, then gathered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


__all__ = ["GatherWithGrad", "WorldInfo", "gather_with_grad", "is_distributed", "pad_to_global_max", "world_info"]


@dataclass(frozen=True)
class WorldInfo:
    """Where this process stands: ``rank``/``world_size`` of the default process group (0/1 without one)."""

    rank: int
    world_size: int
    local_rank: int
    is_distributed: bool

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> WorldInfo:
    """Rank and world size from the initialised process group, else a single process.

    ``local_rank`` comes from the launcher's ``LOCAL_RANK`` variable (torchrun and accelerate set it), 0 otherwise.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        return WorldInfo(dist.get_rank(), world_size, local_rank, world_size > 1)
    return WorldInfo(0, 1, local_rank, False)


class GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sends each rank the sum over ranks of the gradients of its slice.

    ``forward(x)`` returns a tuple of ``world_size`` tensors shaped like ``x`` (rank order); ``x`` must have the same
    shape on every rank.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every slice; summing here and averaging in DDP yields the gradient of the
        # mean loss (see the module docstring). Autograd materialises unused outputs' gradients as zeros.
        stacked = torch.stack(grads)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def _check_same_shape(x: torch.Tensor, name: str) -> None:
    world_size = dist.get_world_size()
    # The number of dimensions first (a shape vector of the wrong length would make all_gather itself fail).
    ndim = torch.tensor([x.dim()], dtype=torch.long, device=x.device)
    ndims = [torch.zeros_like(ndim) for _ in range(world_size)]
    dist.all_gather(ndims, ndim)
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    if len({int(n) for n in ndims}) == 1:
        shapes = [torch.zeros_like(shape) for _ in range(world_size)]
        dist.all_gather(shapes, shape)
        found = [tuple(int(v) for v in s) for s in shapes]
    else:
        found = [f"{int(n)}-d" for n in ndims]
    if len(set(found)) != 1:
        raise ValueError(
            f"gather_with_grad({name}): the tensor must have the same shape on every rank (equal per-process batch: "
            f"use drop_last=True; pad variable lengths with pad_to_global_max), got per-rank shapes {found}"
        )


def gather_with_grad(x: torch.Tensor, check_shapes: bool = True, name: str = "tensor") -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path to the local slice.

    Identity (the same tensor object) when not running distributed, so single-process code is unchanged. Integer
    tensors (e.g. ``cap_lens``) are gathered without autograd.

    Args:
        x: ``[B, ...]``, with the same shape on every rank.
        check_shapes: verify the shapes first with two tiny collectives, so a mismatch raises a ``ValueError``
            instead of hanging or returning garbage. Set ``False`` in a tight loop once the shapes are known good.
        name: used in the error message.

    Returns:
        ``[world_size * B, ...]``, rank 0's rows first.
    """
    if not is_distributed():
        return x
    if check_shapes:
        _check_same_shape(x, name)
    if x.requires_grad:
        return torch.cat(GatherWithGrad.apply(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def pad_to_global_max(x: torch.Tensor, dim: int = 1, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` along ``dim`` (at the end) to the largest size of that dimension on any rank.

    Use before :func:`gather_with_grad` for variable-length tensors, e.g. word features ``[B, L, D]`` whose ``L``
    differs between ranks; the per-sample lengths (``cap_lens``) travel separately. Padding is differentiable
    (``F.pad``). Without a process group it returns ``x`` unchanged.
    """
    if not is_distributed():
        return x
    dim = dim % x.dim()
    size = torch.tensor([x.shape[dim]], dtype=torch.long, device=x.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    missing = int(size) - x.shape[dim]
    if missing == 0:
        return x
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, missing]
    return F.pad(x, pad, value=value)
