"""Exact top-k search of query embeddings against a gallery: in memory or an on-disk `EmbeddingStore`.

The search streams the gallery in chunks, scores each against all queries and keeps a running top-k. It is exact:
the result equals a full sort of the query-gallery similarity matrix, ties broken by the lower gallery index, so
results do not depend on the chunk size or on `torch.topk`'s unspecified order among equal scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .store import EmbeddingStore, Id, _as_matrix


@dataclass
class TopKResult:
    """The `k` best gallery items per query, best first.

    Attributes:
        scores: `[Q, k]` float32 similarities.
        indices: `[Q, k]` int64 gallery row positions.
        ids: per query, the `k` gallery ids (`None` when the gallery had no ids).
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[list[Id]] | None = None


def _best_k(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best columns per row by (score descending, index ascending)."""
    by_index = torch.argsort(indices, dim=1)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    # Stable: among equal scores the index order from the first sort survives.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), indices.gather(1, order)


def _chunk_candidates(sim: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's k best `(scores, global indices)`, exact under ties."""
    kk = min(k, sim.shape[1])
    values, local = torch.topk(sim, kk, dim=1)
    # torch.topk may pick any of several equal scores at the k-th place. If some row has more scores tied with its
    # k-th value than topk kept, sort that chunk fully instead (rare outside synthetic data).
    if ((sim >= values[:, -1:]).sum(1) > kk).any():
        local = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :kk]
        values = sim.gather(1, local)
    return values, local + offset


def exact_topk(
    queries: Any,
    gallery: EmbeddingStore | torch.Tensor | np.ndarray,
    k: int,
    chunk_size: int = 65536,
    normalize: bool = True,
    gallery_ids: Sequence[Id] | None = None,
) -> TopKResult:
    """Exact top-k gallery items per query, streaming the gallery in chunks.

    Args:
        queries: `[Q, P]` query embeddings.
        gallery: an `EmbeddingStore` (read chunk by chunk from disk) or an in-memory `[G, P]` matrix.
        k: hits per query (at most G).
        chunk_size: gallery rows scored at once; memory is about `Q * chunk_size` floats.
        normalize: L2-normalise queries and gallery rows first (cosine similarity, as every ALTA protocol uses);
            `False` scores raw dot products.
        gallery_ids: ids for an in-memory gallery (a store brings its own).

    Returns:
        `TopKResult` with `[Q, k]` scores and indices, ties broken by the lower gallery index, and the hits' ids.
    """
    q = _as_matrix(queries, "queries").to(torch.float32)
    if normalize:
        q = F.normalize(q, dim=-1)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive; got {chunk_size}")
    if isinstance(gallery, EmbeddingStore):
        size, dim, ids = len(gallery), gallery.dim, gallery.ids
        chunks: Iterator[tuple[int, torch.Tensor]] = gallery.iter_chunks(chunk_size)
    else:
        g = _as_matrix(gallery, "gallery")
        size, dim, ids = g.shape[0], g.shape[1], (list(gallery_ids) if gallery_ids is not None else None)
        if ids is not None and len(ids) != size:
            raise ValueError(f"`gallery_ids` has {len(ids)} ids for {size} gallery rows")
        chunks = ((s, g[s : s + chunk_size]) for s in range(0, size, chunk_size))
    if q.shape[1] != dim:
        raise ValueError(f"queries have size {q.shape[1]}; the gallery has size {dim}")
    if not 1 <= k <= size:
        raise ValueError(f"`k` must lie in [1, {size}] (the gallery size); got {k}")

    best_scores = torch.empty(q.shape[0], 0)
    best_indices = torch.empty(q.shape[0], 0, dtype=torch.int64)
    for offset, chunk in chunks:
        chunk = chunk.to(torch.float32)
        if normalize:
            chunk = F.normalize(chunk, dim=-1)
        sim = q @ chunk.T
        if torch.isnan(sim).any():
            raise ValueError(f"NaN similarity in gallery rows {offset}..{offset + len(chunk) - 1}")
        values, indices = _chunk_candidates(sim, offset, k)
        best_scores, best_indices = _best_k(
            torch.cat([best_scores, values], 1), torch.cat([best_indices, indices], 1), k
        )
    hit_ids = [[ids[i] for i in row] for row in best_indices.tolist()] if ids is not None else None
    return TopKResult(scores=best_scores, indices=best_indices, ids=hit_ids)


def search(
    query_embeds: Any,
    gallery: EmbeddingStore | str | os.PathLike | torch.Tensor,
    k: int = 10,
    chunk_size: int = 65536,
    gallery_ids: Sequence[Id] | None = None,
) -> TopKResult:
    """Exact cosine top-k of queries against a gallery, streaming an on-disk store in chunks.

    Args:
        query_embeds: `[Q, P]` (from `embed_images` / `embed_texts`).
        gallery: an `EmbeddingStore`, its folder, or an in-memory `[G, P]` matrix (then `gallery_ids` names rows).
        k: hits per query (at most the gallery size).
        chunk_size: gallery rows scored at once.

    Returns:
        `TopKResult(scores [Q,k], indices [Q,k], ids)`, best first, ties broken by the lower gallery position.
    """
    if isinstance(gallery, str | os.PathLike):
        gallery = EmbeddingStore(gallery)
    return exact_topk(query_embeds, gallery, k, chunk_size=chunk_size, gallery_ids=gallery_ids)


__all__ = ["TopKResult", "exact_topk", "search"]
