"""An on-disk embedding store: galleries too large to hold as one matrix, written shard by shard.

Store layout (one folder)::

    index.json                  {"format": "alta-embedding-store", "version": 1, "dim": P, "dtype": "float32",
                                 "count": N, "shards": [{"file": ..., "ids_file": ..., "count": n}, ...]}
    shard-00000.safetensors     tensor "embeddings" [n, P]
    shard-00000.ids.json        the n ids (strings or ints), in row order

Shards are written as they fill and `index.json` is replaced atomically after each one, so an interrupted run leaves
a valid store holding every completed shard; re-opening the folder appends. Ids are kept as given (not checked for
uniqueness). Searching a store is `inference.search`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


STORE_FORMAT = "alta-embedding-store"
STORE_VERSION = 1
INDEX_FILE = "index.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}

Id = str | int


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"`{name}` must be [N, P]; got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    return t


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------


class EmbeddingStore:
    """Read access to an embedding store folder (see the module docstring for the layout)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"no embedding store at {self.folder}: {INDEX_FILE} is missing")
        index = json.loads(index_path.read_text())
        if index.get("format") != STORE_FORMAT:
            raise ValueError(f"{index_path} is not an {STORE_FORMAT} index; format = {index.get('format')!r}")
        self.dim: int = int(index["dim"])
        self.dtype: torch.dtype = _DTYPES[index["dtype"]]
        self.shards: list[dict[str, Any]] = list(index["shards"])
        self.count: int = int(index["count"])
        self._ids: list[Id] | None = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.folder)!r}, count={self.count}, dim={self.dim}, shards={len(self.shards)})"

    @property
    def ids(self) -> list[Id]:
        """All ids in row order (read once, then cached)."""
        if self._ids is None:
            ids: list[Id] = []
            for shard in self.shards:
                ids.extend(json.loads((self.folder / shard["ids_file"]).read_text()))
            if len(ids) != self.count:
                raise ValueError(f"{self.folder}: the id files hold {len(ids)} ids for {self.count} embeddings")
            self._ids = ids
        return self._ids

    def iter_chunks(self, chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(offset, embeddings [c, P])` in row order, reading at most `chunk_size` rows at a time.

        Rows are sliced out of the safetensors files, so memory stays bounded by the chunk even when a shard is
        larger. `chunk_size=None` yields one chunk per shard.
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be positive; got {chunk_size}")
        offset = 0
        for shard in self.shards:
            path = self.folder / shard["file"]
            with safe_open(str(path), framework="pt") as f:
                rows = f.get_slice("embeddings")
                n = int(shard["count"])
                step = n if chunk_size is None else chunk_size
                for start in range(0, n, step):
                    chunk = rows[start : min(start + step, n)]
                    yield offset + start, chunk
            offset += n

    def load(self) -> torch.Tensor:
        """All embeddings as one `[N, P]` tensor (only for stores that fit in memory)."""
        chunks = [chunk for _, chunk in self.iter_chunks()]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim, dtype=self.dtype)


class EmbeddingStoreWriter:
    """Write embeddings and their ids incrementally into a store folder.

    Rows are buffered and written as shards of `shard_size` rows; `flush()` writes what is buffered as a (possibly
    smaller) shard; `close()` flushes and returns the `EmbeddingStore`. As a context manager it closes on exit.

    Args:
        folder: the store folder (created if needed). An existing store is appended to unless `overwrite=True`,
            which deletes its shard and index files first.
        shard_size: rows per shard file.
        dtype: storage dtype (`torch.float32` default; `torch.float16` halves the disk use, scores are computed in
            float32 either way).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        shard_size: int = 65536,
        dtype: torch.dtype = torch.float32,
        overwrite: bool = False,
    ):
        if shard_size < 1:
            raise ValueError(f"`shard_size` must be positive; got {shard_size}")
        names = {v: k for k, v in _DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"`dtype` must be one of {list(_DTYPES.values())}; got {dtype}")
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.dtype = dtype
        self._dtype_name = names[dtype]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._shards: list[dict[str, Any]] = []
        self._count = 0
        self.dim: int | None = None
        if (self.folder / INDEX_FILE).is_file():
            existing = EmbeddingStore(self.folder)
            if overwrite:
                for shard in existing.shards:
                    (self.folder / shard["file"]).unlink(missing_ok=True)
                    (self.folder / shard["ids_file"]).unlink(missing_ok=True)
                (self.folder / INDEX_FILE).unlink()
            else:
                if existing.dtype != dtype:
                    raise ValueError(f"{self.folder} stores {existing.dtype}; cannot append {dtype}")
                self._shards, self._count, self.dim = existing.shards, existing.count, (existing.dim or None)
        self._buffer: list[torch.Tensor] = []
        self._buffer_ids: list[Id] = []
        self._buffered = 0

    def add(self, embeddings: Any, ids: Sequence[Id]) -> None:
        """Append `[n, P]` embeddings with their `n` ids (strings or ints)."""
        emb = _as_matrix(embeddings, "embeddings")
        ids = list(ids)
        if len(ids) != emb.shape[0]:
            raise ValueError(f"got {emb.shape[0]} embeddings but {len(ids)} ids")
        bad = [i for i in ids if not isinstance(i, str | int) or isinstance(i, bool)]
        if bad:
            raise TypeError(f"ids must be strings or ints (they are stored as JSON); got {bad[:5]!r}")
        if self.dim is None:
            self.dim = int(emb.shape[1])
        elif emb.shape[1] != self.dim:
            raise ValueError(f"embeddings have size {emb.shape[1]}; the store {self.folder} holds size {self.dim}")
        if emb.shape[0] == 0:
            return
        self._buffer.append(emb.to(self.dtype))
        self._buffer_ids.extend(ids)
        self._buffered += emb.shape[0]
        while self._buffered >= self.shard_size:
            self._write_shard(self.shard_size)

    def _write_shard(self, n: int) -> None:
        data = torch.cat(self._buffer)
        ids = self._buffer_ids
        shard_data, rest = data[:n].contiguous(), data[n:]
        number = len(self._shards)
        name = f"shard-{number:05d}"
        save_file({"embeddings": shard_data}, str(self.folder / f"{name}.safetensors"))
        (self.folder / f"{name}.ids.json").write_text(json.dumps(ids[:n]))
        self._shards.append({"file": f"{name}.safetensors", "ids_file": f"{name}.ids.json", "count": n})
        self._count += n
        self._buffer, self._buffer_ids, self._buffered = ([rest] if len(rest) else []), ids[n:], len(rest)
        # The index is replaced only after the shard files exist, so readers never see a dangling entry.
        self._write_index()

    def _write_index(self) -> None:
        index = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "dim": self.dim if self.dim is not None else 0,
            "dtype": self._dtype_name,
            "count": self._count,
            "shards": self._shards,
        }
        _write_json_atomic(self.folder / INDEX_FILE, index)

    def flush(self) -> None:
        """Write buffered rows as a shard now."""
        if self._buffered:
            self._write_shard(self._buffered)
        elif not (self.folder / INDEX_FILE).is_file():
            self._write_index()

    def close(self) -> EmbeddingStore:
        self.flush()
        return EmbeddingStore(self.folder)

    def __enter__(self) -> EmbeddingStoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()


def write_embedding_store(
    folder: str | os.PathLike, embeddings: Any, ids: Sequence[Id], shard_size: int = 65536, overwrite: bool = True
) -> EmbeddingStore:
    """Write `[N, P]` embeddings and `N` ids in one call (replacing an existing store unless `overwrite=False`)."""
    with EmbeddingStoreWriter(folder, shard_size=shard_size, overwrite=overwrite) as writer:
        writer.add(embeddings, ids)
    return EmbeddingStore(folder)


__all__ = [
    "INDEX_FILE",
    "STORE_FORMAT",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "Id",
    "write_embedding_store",
]
