"""Exact top-k search of query embeddings against a gallery: in memory or an on-disk `EmbeddingStore`.

The search streams the gallery in chunks, scores each against all queries and keeps a running top-k. It is exact:
the result equals a full sort of the query-gallery similarity matrix, ties broken by the lower gallery index, so
results do not depend on the chunk size or on `torch.topk`'s unspecified order among equal scores.

Galleries larger than memory: an `EmbeddingStore` is read chunk by chunk with plain file reads, and only the ids of
the hits are read at the end, so the search needs memory for one chunk and the running top-k, not for the gallery.
`memory_budget` (bytes) sizes the chunk from the query count and the embedding size (`chunk_rows_for_budget`).
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


def chunk_rows_for_budget(memory_budget: int, num_queries: int, dim: int, k: int, itemsize: int = 4) -> int:
    """Gallery rows per chunk so that one step of `exact_topk` stays within `memory_budget` bytes.

    Per gallery row a step holds the row as read (`itemsize * dim`), its float32 and normalised copies
    (`2 * 4 * dim`), and per query its score, a sort or comparison buffer and an index (`(4 + 4 + 8) * Q`); the
    running top-k and the candidates cost `2 * (4 + 8) * Q * k` on top.

    Raises:
        ValueError: the budget does not fit even one row next to the running top-k.
    """
    per_row = itemsize * dim + 8 * dim + 16 * num_queries
    fixed = 24 * num_queries * k + 4 * num_queries * dim
    rows = (memory_budget - fixed) // per_row
    if rows < 1:
        raise ValueError(
            f"`memory_budget` of {memory_budget} bytes is too small for {num_queries} queries of size {dim} and "
            f"k={k}; it needs at least {fixed + per_row} bytes"
        )
    return int(rows)


def exact_topk(
    queries: Any,
    gallery: EmbeddingStore | torch.Tensor | np.ndarray,
    k: int,
    chunk_size: int = 65536,
    normalize: bool = True,
    gallery_ids: Sequence[Id] | None = None,
    memory_budget: int | None = None,
) -> TopKResult:
    """Exact top-k gallery items per query, streaming the gallery in chunks.

    Args:
        queries: `[Q, P]` query embeddings.
        gallery: an `EmbeddingStore` (read chunk by chunk from disk) or an in-memory `[G, P]` matrix.
        k: hits per query (at most G).
        chunk_size: gallery rows scored at once; memory is about `Q * chunk_size` floats.
        normalize: L2-normalise queries and gallery rows first (cosine similarity, as every ALTA protocol uses);
            `False` scores raw dot products.
        gallery_ids: ids for an in-memory gallery (a store brings its own; only the hits' ids are read).
        memory_budget: bytes one step may use; sets the chunk size (`chunk_rows_for_budget`), overriding
            `chunk_size` when smaller. It bounds the memory the search holds; glibc may keep freed chunks cached in
            the process on top (`MALLOC_MMAP_THRESHOLD_=131072` in the environment returns them at once).

    Returns:
        `TopKResult` with `[Q, k]` scores and indices, ties broken by the lower gallery index, and the hits' ids.
    """
    q = _as_matrix(queries, "queries").to(torch.float32)
    if normalize:
        q = F.normalize(q, dim=-1)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive; got {chunk_size}")
    if isinstance(gallery, EmbeddingStore):
        size, dim = len(gallery), gallery.dim
        itemsize = torch.empty((), dtype=gallery.dtype).element_size()
    else:
        g = _as_matrix(gallery, "gallery")
        size, dim, itemsize = g.shape[0], g.shape[1], g.element_size()
        ids = list(gallery_ids) if gallery_ids is not None else None
        if ids is not None and len(ids) != size:
            raise ValueError(f"`gallery_ids` has {len(ids)} ids for {size} gallery rows")
    if q.shape[1] != dim:
        raise ValueError(f"queries have size {q.shape[1]}; the gallery has size {dim}")
    if not 1 <= k <= size:
        raise ValueError(f"`k` must lie in [1, {size}] (the gallery size); got {k}")
    if memory_budget is not None:
        chunk_size = min(chunk_size, chunk_rows_for_budget(memory_budget, q.shape[0], dim, k, itemsize))
    if isinstance(gallery, EmbeddingStore):
        chunks: Iterator[tuple[int, torch.Tensor]] = gallery.iter_chunks(chunk_size)
    else:
        chunks = ((s, g[s : s + chunk_size]) for s in range(0, size, chunk_size))

    best_scores = torch.empty(q.shape[0], 0)
    best_indices = torch.empty(q.shape[0], 0, dtype=torch.int64)
    for offset, chunk in chunks:
        chunk = chunk.to(torch.float32)
        if normalize:
            chunk = F.normalize(chunk, dim=-1)
        sim = q @ chunk.T
        del chunk
        if torch.isnan(sim).any():
            raise ValueError(f"NaN similarity in gallery rows {offset}..{offset + sim.shape[1] - 1}")
        values, indices = _chunk_candidates(sim, offset, k)
        del sim
        best_scores, best_indices = _best_k(
            torch.cat([best_scores, values], 1), torch.cat([best_indices, indices], 1), k
        )
    rows = best_indices.tolist()
    if isinstance(gallery, EmbeddingStore):
        flat = gallery.ids_at([i for row in rows for i in row])
        hit_ids: list[list[Id]] | None = [flat[r * k : (r + 1) * k] for r in range(len(rows))]
    else:
        hit_ids = [[ids[i] for i in row] for row in rows] if ids is not None else None
    return TopKResult(scores=best_scores, indices=best_indices, ids=hit_ids)


def search(
    query_embeds: Any,
    gallery: EmbeddingStore | str | os.PathLike | torch.Tensor,
    k: int = 10,
    chunk_size: int = 65536,
    gallery_ids: Sequence[Id] | None = None,
    memory_budget: int | None = None,
) -> TopKResult:
    """Exact cosine top-k of queries against a gallery, streaming an on-disk store in chunks.

    Args:
        query_embeds: `[Q, P]` (from `embed_images` / `embed_texts`).
        gallery: an `EmbeddingStore`, its folder, or an in-memory `[G, P]` matrix (then `gallery_ids` names rows).
        k: hits per query (at most the gallery size).
        chunk_size: gallery rows scored at once.
        memory_budget: bytes one step may use (sets a smaller chunk size; see `chunk_rows_for_budget`).

    Returns:
        `TopKResult(scores [Q,k], indices [Q,k], ids)`, best first, ties broken by the lower gallery position.
    """
    if isinstance(gallery, str | os.PathLike):
        gallery = EmbeddingStore(gallery)
    return exact_topk(
        query_embeds, gallery, k, chunk_size=chunk_size, gallery_ids=gallery_ids, memory_budget=memory_budget
    )


__all__ = ["TopKResult", "chunk_rows_for_budget", "exact_topk", "search"]
