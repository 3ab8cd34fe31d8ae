"""Coercion of the array-likes the inference and evaluation functions accept (numpy, torch, lists) and L2
normalisation, with errors that name the argument."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def as_float_tensor(x: ArrayLike, name: str, ndim: int) -> torch.Tensor:
    """`x` as a detached floating CPU tensor of `ndim` dimensions (integers become float32)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if t.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions; got shape {tuple(t.shape)}")
    return t.cpu()


def as_1d_array(x: ArrayLike, name: str) -> np.ndarray:
    """`x` as a one-dimensional numpy array."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional; got shape {a.shape}")
    return a


def check_same_length(**arrays: Any) -> None:
    """Raise naming every argument and its length unless all have the same length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length; got {lengths}")


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """`x / max(||x||, 1e-12)` along `dim`, as `F.normalize` (and the reference) does."""
    return F.normalize(x, p=2, dim=dim)


__all__ = ["ArrayLike", "as_1d_array", "as_float_tensor", "check_same_length", "l2_normalize"]
