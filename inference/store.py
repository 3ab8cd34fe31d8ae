"""An on-disk embedding store: galleries too large to hold as one matrix, written shard by shard.

Store layout (version 2, one folder)::

    index.json                      {"format": "alta-embedding-store", "version": 2, "generation": "<hex>",
                                     "dim": P, "dtype": "float32", "count": N,
                                     "shards": [{"file": "shard-<writer>-00000.safetensors", "count": n}, ...]}
    shard-<writer>-00000.safetensors  tensor "embeddings" [n, P]; header metadata: the n ids (JSON), in row order
    .lock                           taken by writers while they change the index

Rules that keep a store intact:

- **Every shard is one file, written atomically** (temporary name, fsync, rename), holding its embeddings and its ids
  together, so rows and ids cannot get out of step. `index.json` is replaced atomically (temporary file, fsync,
  rename) and only after the shard files it lists exist: a reader sees the old index or the new one, never a torn
  one, and an interrupted writer leaves a valid store holding every published shard.
- **Every writer has its own file namespace** (a random writer id in the shard names), and changes the index under
  an exclusive lock after re-reading it, so concurrent writers (threads, processes, `alta-embed` ranks) all keep
  their rows. A file name is never reused: a reader that opened the store before an overwrite reads its old rows or,
  once they are deleted, fails naming the missing shard; it never gets new rows under old ids.
- **Every path stays inside the folder.** Index entries are plain file names (no separators, no `..`, no absolute
  paths); anything else makes the index invalid, with the entry named in the error. Overwriting deletes only files
  the store wrote itself: listed by a valid index, named like a shard, and carrying the store's shard marker.

Version 1 stores (ids in a separate `shard-NNNNN.ids.json` beside each shard) are read; appending to them is refused
(re-write them with `overwrite=True`). Searching a store is `inference.search`; it streams the shards in chunks with
plain file reads, so memory stays bounded by the chunk whatever the store's size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


STORE_FORMAT = "alta-embedding-store"
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
SHARD_FORMAT = "alta-embedding-store-shard"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
# What the store itself names its files: `shard-<namespace>-<n>.safetensors` (writers), `part-<n>.safetensors`
# (alta-embed), and the version-1 names `shard-NNNNN.safetensors` / `shard-NNNNN.ids.json`.
_SHARD_NAME = re.compile(r"^(shard|part)-[A-Za-z0-9_-]+\.safetensors$")
_V1_IDS_NAME = re.compile(r"^shard-[0-9]+\.ids\.json$")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit

Id = str | int


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"`{name}` must be [N, P]; got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    return t


def _check_ids(ids: Sequence[Id]) -> list[Id]:
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str | int) or isinstance(i, bool)]
    if bad:
        raise TypeError(f"ids must be strings or ints (they are stored as JSON); got {bad[:5]!r}")
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Files: atomic writes, confined names, shard headers
# ---------------------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or filesystem can fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomic(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` through a temporary file, fsync and rename (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(obj))
        _replace_atomic(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def confined_file(folder: Path, name: Any, where: str) -> Path:
    """`folder / name` for a plain file name from an index, or `ValueError` naming `where` and the value: no path
    separators, no `..`, nothing absolute, and the resolved path must lie directly in `folder`."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{where}: file entry {name!r} is not a plain file name inside the store folder")
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"{where}: file entry {name!r} resolves outside the store folder ({path.resolve()})")
    return path


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts (no tensor data read)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {size} bytes is larger than the {_MAX_HEADER} allowed")
        raw = handle.read(size)
    if len(raw) != size:
        raise ValueError(f"{path}: truncated safetensors header ({len(raw)} of {size} bytes)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt safetensors header: {err}") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + size


def write_shard(
    path: Path, embeddings: torch.Tensor, ids: Sequence[Id], metadata: dict[str, str] | None = None
) -> None:
    """Write one shard atomically: `embeddings` `[n, P]` with its `n` ids (and any extra string metadata) in the
    header, under a temporary name first, fsync, then renamed to `path`."""
    ids = _check_ids(ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(f"{path.name}: {len(ids)} ids for embeddings of shape {tuple(embeddings.shape)}")
    meta = {**(metadata or {}), "format": SHARD_FORMAT, "ids": json.dumps(ids)}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata=meta)
        _replace_atomic(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _gone(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path}: a shard listed by the index read when this store was opened is gone; the store was overwritten or "
        "removed since: open it again"
    )


class ShardFile:
    """One shard file, read with plain file reads (no memory map), so a chunk costs only its own rows in memory.

    Attributes:
        path: the file.
        count, dim, dtype: the embeddings' shape `[count, dim]` and storage dtype.
        metadata: the header metadata (strings), `ids` included for version-2 shards.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        header, data_start = read_safetensors_header(path)
        entry = header.get("embeddings")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: no tensor named 'embeddings' in the shard")
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if dtype is None or not (isinstance(shape, list) and len(shape) == 2) or not isinstance(offsets, list):
            raise ValueError(f"{path}: unsupported 'embeddings' entry {entry!r}")
        self.count, self.dim = int(shape[0]), int(shape[1])
        self.dtype = dtype
        self._itemsize = torch.empty((), dtype=dtype).element_size()
        begin, end = int(offsets[0]), int(offsets[1])
        if end - begin != self.count * self.dim * self._itemsize:
            raise ValueError(f"{path}: 'embeddings' byte range {offsets} does not match its shape {shape}")
        self._start = data_start + begin
        if path.stat().st_size < data_start + end:
            raise ValueError(f"{path}: truncated shard ({path.stat().st_size} bytes, expected {data_start + end})")
        self.metadata: dict[str, str] = dict(header.get("__metadata__") or {})

    @property
    def is_store_shard(self) -> bool:
        """True when the store (or alta-embed) wrote this file."""
        return self.metadata.get("format") == SHARD_FORMAT

    def ids(self) -> list[Id]:
        """The ids in the header (version-2 shards)."""
        if "ids" not in self.metadata:
            raise ValueError(f"{self.path}: the shard header holds no ids")
        ids = json.loads(self.metadata["ids"])
        if not isinstance(ids, list) or len(ids) != self.count:
            raise ValueError(f"{self.path}: the header holds {len(ids)} ids for {self.count} embeddings")
        return ids

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Embeddings `[stop - start, dim]` read from the file (a fresh tensor; nothing stays mapped)."""
        start, stop = max(0, start), min(stop, self.count)
        n = max(0, stop - start)
        buffer = torch.empty(n * self.dim * self._itemsize, dtype=torch.uint8)
        if n:
            try:
                handle = open(self.path, "rb")
            except FileNotFoundError as err:
                raise _gone(self.path) from err
            with handle:
                handle.seek(self._start + start * self.dim * self._itemsize)
                got = handle.readinto(buffer.numpy())
            if got != buffer.numel():
                raise ValueError(f"{self.path}: short read ({got} of {buffer.numel()} bytes) at row {start}")
        return buffer.view(self.dtype).reshape(n, self.dim)


# ---------------------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------------------


def read_index(folder: Path) -> dict[str, Any]:
    """Read and validate `index.json`: format, version, sizes, and every file entry confined to `folder`."""
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"no embedding store at {folder}: {INDEX_FILE} is missing")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index_path}: not valid JSON: {err}") from err
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{index_path} is not an {STORE_FORMAT} index; format = {got!r}")
    version = index.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{index_path}: store version {version!r} is not one of {READABLE_VERSIONS}")
    if index.get("dtype") not in _DTYPES:
        raise ValueError(f"{index_path}: dtype {index.get('dtype')!r} is not one of {sorted(_DTYPES)}")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{index_path}: 'shards' must be a list; got {type(shards).__name__}")
    total = 0
    for number, shard in enumerate(shards):
        where = f"{index_path} shard {number}"
        if not isinstance(shard, dict):
            raise ValueError(f"{where}: entry {shard!r} is not an object")
        confined_file(folder, shard.get("file"), where)
        if version == 1:
            confined_file(folder, shard.get("ids_file"), where)
        count = shard.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{where}: count {count!r} is not a non-negative integer")
        total += count
    if index.get("count") != total:
        raise ValueError(f"{index_path}: count {index.get('count')!r} differs from the shards' total {total}")
    return index


def _store_written_files(folder: Path, index: dict[str, Any]) -> list[Path]:
    """The files of a valid index that the store itself wrote (named like its shards, carrying its marker)."""
    owned = []
    for shard in index["shards"]:
        path = folder / shard["file"]
        if not _SHARD_NAME.match(shard["file"]) or path.is_symlink() or not path.is_file():
            continue
        try:
            shard_file = ShardFile(path)
        except (OSError, ValueError):
            continue
        if index["version"] == 1:
            ids_path = folder / shard["ids_file"]
            if re.match(r"^shard-[0-9]+\.safetensors$", shard["file"]) and _V1_IDS_NAME.match(shard["ids_file"]):
                owned.append(path)
                if ids_path.is_file() and not ids_path.is_symlink():
                    owned.append(ids_path)
        elif shard_file.is_store_shard:
            owned.append(path)
    return owned


@contextlib.contextmanager
def store_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the store's index for one writer at a time (POSIX `flock`, or an exclusive-create lock
    file elsewhere). The lock is released when the block ends, or by the system when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is not None:
        with open(path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    import time  # pragma: no cover - Windows

    while True:  # pragma: no cover
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            time.sleep(0.01)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        path.unlink(missing_ok=True)


def publish_index(
    folder: Path, shards: list[dict[str, Any]], dim: int, dtype: torch.dtype, generation: str | None = None
) -> dict[str, Any]:
    """Write a version-2 `index.json` listing `shards` (`{"file", "count"}`, files already written), atomically."""
    names = {v: k for k, v in _DTYPES.items()}
    index = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "generation": generation or uuid.uuid4().hex,
        "dim": int(dim),
        "dtype": names[dtype],
        "count": sum(int(s["count"]) for s in shards),
        "shards": [{"file": s["file"], "count": int(s["count"])} for s in shards],
    }
    for number, shard in enumerate(index["shards"]):
        confined_file(folder, shard["file"], f"new index shard {number}")
    write_json_atomic(folder / INDEX_FILE, index)
    return index


def _owned_files(folder: Path) -> list[Path]:
    """The files the current index lists that the store wrote; an invalid index lists nothing deletable."""
    if not (folder / INDEX_FILE).exists():
        return []
    try:
        return _store_written_files(folder, read_index(folder))
    except (ValueError, OSError):
        return []


def _delete(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        _fsync_dir(paths[0].parent)


def clear_store(folder: str | os.PathLike) -> list[Path]:
    """Delete what the store wrote in `folder` (the index, and the shards it lists that the store wrote: named like
    its shards and carrying its marker); files the store did not write are left alone, whatever an index lists.
    Returns the deleted paths. Call it under `store_lock`."""
    folder = Path(folder)
    owned = _owned_files(folder)
    if (folder / INDEX_FILE).exists():
        owned = [folder / INDEX_FILE, *owned]  # the index first: no reader opens a store with missing shards
    _delete(owned)
    return owned


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------


class EmbeddingStore:
    """Read access to an embedding store folder (see the module docstring for the layout).

    The index is read once when the store is opened; the shards are read when needed. Opening a store that another
    writer changes later gives a consistent view of the rows published when it was opened (or an error naming a
    shard that was deleted since), never a mix.

    Attributes:
        folder, dim, dtype, count (also `len(store)`), version, generation, shards (the index entries).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = read_index(self.folder)
        self.version: int = int(index["version"])
        self.generation: str | None = index.get("generation")
        self.dim: int = int(index["dim"])
        self.dtype: torch.dtype = _DTYPES[index["dtype"]]
        self.shards: list[dict[str, Any]] = list(index["shards"])
        self.count: int = int(index["count"])
        self._ids: list[Id] | None = None
        self._files: dict[int, ShardFile] = {}

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.folder)!r}, count={self.count}, dim={self.dim}, shards={len(self.shards)})"

    def _shard(self, number: int) -> ShardFile:
        if number not in self._files:
            entry = self.shards[number]
            path = confined_file(self.folder, entry["file"], f"{self.folder / INDEX_FILE} shard {number}")
            if not path.is_file():
                raise _gone(path)
            shard = ShardFile(path)
            if shard.count != entry["count"] or (shard.count and shard.dim != self.dim):
                raise ValueError(
                    f"{path}: holds [{shard.count}, {shard.dim}] embeddings; the index says [{entry['count']}, "
                    f"{self.dim}]"
                )
            self._files[number] = shard
        return self._files[number]

    def shard_ids(self, number: int) -> list[Id]:
        """The ids of shard `number`, in row order."""
        shard = self._shard(number)
        if self.version == 1:
            entry = self.shards[number]
            where = f"{self.folder / INDEX_FILE} shard {number}"
            ids = json.loads(confined_file(self.folder, entry["ids_file"], where).read_text())
            if not isinstance(ids, list) or len(ids) != shard.count:
                raise ValueError(f"{self.folder / entry['ids_file']}: {len(ids)} ids for {shard.count} embeddings")
            return ids
        return shard.ids()

    @property
    def ids(self) -> list[Id]:
        """All ids in row order (read once, then cached). For huge stores prefer `ids_at`."""
        if self._ids is None:
            ids: list[Id] = []
            for number in range(len(self.shards)):
                ids.extend(self.shard_ids(number))
            if len(ids) != self.count:
                raise ValueError(f"{self.folder}: the shards hold {len(ids)} ids for {self.count} embeddings")
            self._ids = ids
        return self._ids

    def ids_at(self, rows: Sequence[int]) -> list[Id]:
        """The ids of the given row positions, reading only the shards that hold them."""
        if self._ids is not None:
            return [self._ids[r] for r in rows]
        starts = np.cumsum([0] + [int(s["count"]) for s in self.shards])
        out: list[Id | None] = [None] * len(rows)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for position, row in enumerate(rows):
            if not 0 <= row < self.count:
                raise IndexError(f"row {row} outside the store's {self.count} rows")
            number = int(np.searchsorted(starts, row, side="right") - 1)
            wanted.setdefault(number, []).append((position, row - int(starts[number])))
        for number, pairs in wanted.items():
            ids = self.shard_ids(number)
            for position, local in pairs:
                out[position] = ids[local]
        return out  # type: ignore[return-value]

    def iter_chunks(self, chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(offset, embeddings [c, P])` in row order, reading at most `chunk_size` rows at a time.

        Rows are read from the shard files with plain reads, so memory stays bounded by the chunk even when a shard
        or the store is larger than memory. `chunk_size=None` yields one chunk per shard.
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be positive; got {chunk_size}")
        offset = 0
        for number, entry in enumerate(self.shards):
            n = int(entry["count"])
            if n == 0:
                continue
            shard = self._shard(number)
            step = n if chunk_size is None else chunk_size
            for start in range(0, n, step):
                yield offset + start, shard.rows(start, min(start + step, n))
            offset += n

    def load(self) -> torch.Tensor:
        """All embeddings as one `[N, P]` tensor (only for stores that fit in memory)."""
        chunks = [chunk for _, chunk in self.iter_chunks()]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim, dtype=self.dtype)


class EmbeddingStoreWriter:
    """Write embeddings and their ids incrementally into a store folder.

    Rows are buffered and written as shards of `shard_size` rows; `flush()` writes what is buffered as a (possibly
    smaller) shard; `close()` flushes and returns the `EmbeddingStore`. As a context manager it closes on exit.
    Several writers may add to one store at the same time (threads or processes): each writes its own shard files
    and publishes them under the store's lock, so every row of every writer ends up in the store.

    Args:
        folder: the store folder (created if needed, with an empty index). An existing store is appended to unless
            `overwrite=True`, which publishes an empty store and then deletes the files the store wrote (never files
            it did not write, whatever the old index lists).
        shard_size: rows per shard file.
        dtype: storage dtype (`torch.float32` default; `torch.float16` halves the disk use, scores are computed in
            float32 either way).

    Raises:
        RuntimeError: when publishing a shard, if another writer overwrote or removed the store since this writer
            opened it (its rows would otherwise mix with another store's).
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
        if dtype not in _DTYPES.values():
            raise ValueError(f"`dtype` must be one of {list(_DTYPES.values())}; got {dtype}")
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.dtype = dtype
        self.namespace = uuid.uuid4().hex[:16]
        self._written = 0
        self.dim: int | None = None
        with store_lock(self.folder):
            if (self.folder / INDEX_FILE).exists() and not overwrite:
                existing = read_index(self.folder)
                if existing["version"] != STORE_VERSION:
                    raise ValueError(
                        f"{self.folder} is a version-{existing['version']} store; appending needs version "
                        f"{STORE_VERSION}: re-write it with overwrite=True"
                    )
                if _DTYPES[existing["dtype"]] != dtype:
                    raise ValueError(f"{self.folder} stores {existing['dtype']}; cannot append {dtype}")
                self.generation = existing["generation"]
                self.dim = int(existing["dim"]) or None
            else:
                # The empty store is published before the old files go, so a reader opening the folder meanwhile
                # sees one store or the other; one opened earlier fails on the deleted shards, naming them.
                owned = _owned_files(self.folder)
                self.generation = publish_index(self.folder, [], 0, dtype)["generation"]
                _delete(owned)
        self._buffer: list[torch.Tensor] = []
        self._buffer_ids: list[Id] = []
        self._buffered = 0

    def add(self, embeddings: Any, ids: Sequence[Id]) -> None:
        """Append `[n, P]` embeddings with their `n` ids (strings or ints)."""
        emb = _as_matrix(embeddings, "embeddings")
        ids = _check_ids(ids)
        if len(ids) != emb.shape[0]:
            raise ValueError(f"got {emb.shape[0]} embeddings but {len(ids)} ids")
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
        name = f"shard-{self.namespace}-{self._written:05d}.safetensors"
        path = self.folder / name
        write_shard(path, data[:n], ids[:n])
        try:
            self._publish({"file": name, "count": n}, int(data.shape[1]))
        except BaseException:
            path.unlink(missing_ok=True)  # never left behind unlisted
            raise
        self._written += 1
        rest = data[n:]
        self._buffer, self._buffer_ids, self._buffered = ([rest] if len(rest) else []), ids[n:], len(rest)

    def _publish(self, entry: dict[str, Any], dim: int) -> None:
        with store_lock(self.folder):
            try:
                index = read_index(self.folder)
            except FileNotFoundError:
                index = None
            if index is None or index.get("generation") != self.generation:
                raise RuntimeError(
                    f"{self.folder}: the store was overwritten or removed by another writer since this writer "
                    f"opened it; {entry['count']} rows not added"
                )
            if index["dim"] not in (0, dim):
                raise ValueError(f"embeddings have size {dim}; the store {self.folder} holds size {index['dim']}")
            publish_index(self.folder, [*index["shards"], entry], dim, self.dtype, generation=self.generation)

    def flush(self) -> None:
        """Write buffered rows as a shard now."""
        if self._buffered:
            self._write_shard(self._buffered)

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
    "STORE_VERSION",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "Id",
    "ShardFile",
    "clear_store",
    "publish_index",
    "read_index",
    "write_embedding_store",
    "write_shard",
]
