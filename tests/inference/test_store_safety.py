"""Faults of the embedding store, each reproduced: paths outside the store, two writers at once, overwrite while a
reader is open, and a crash between a shard and its index entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from inference.search import exact_topk
from inference.store import EmbeddingStore, EmbeddingStoreWriter, write_embedding_store


REPO = Path(__file__).resolve().parents[2]


def _plant_index(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = {"format": "alta-embedding-store", "version": 1, "dim": 2, "dtype": "float32", "count": 2,
             "shards": entries}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("version", [1, 2])
def test_planted_index_cannot_reach_or_delete_files_outside_the_store(tmp_path: Path, version: int):
    outside = tmp_path / "victim-outside.txt"
    absolute = tmp_path / "elsewhere" / "victim-absolute.safetensors"
    inside = tmp_path / "store" / "notes.safetensors"  # in the folder, but not written by the store
    for victim in (outside, absolute, inside):
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_text("precious")
    entries = [
        {"file": "../victim-outside.txt", "ids_file": "../victim-outside.txt", "count": 1},
        {"file": str(absolute), "ids_file": str(absolute), "count": 1},
    ]
    if version == 2:
        entries = [{"file": e["file"], "count": 1} for e in entries]
    _plant_index(tmp_path / "store", entries)
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    index["version"] = version
    (tmp_path / "store" / "index.json").write_text(json.dumps(index))
    # Reading names the bad entry instead of following it.
    with pytest.raises(ValueError, match=r"victim-outside\.txt.*not a plain file name"):
        EmbeddingStore(tmp_path / "store")
    # Overwriting replaces the index but deletes none of the files it lists, nor anything else it did not write.
    index["shards"] = [{"file": "notes.safetensors", "ids_file": "notes.safetensors", "count": 2}]
    (tmp_path / "store" / "index.json").write_text(json.dumps(index))
    write_embedding_store(tmp_path / "store", torch.ones(2, 2), ["a", "b"])
    _plant_index(tmp_path / "store", entries)
    with EmbeddingStoreWriter(tmp_path / "store", overwrite=True) as writer:
        writer.add(torch.ones(1, 2), ["c"])
    for victim in (outside, absolute, inside):
        assert victim.read_text() == "precious", victim
    assert EmbeddingStore(tmp_path / "store").ids == ["c"]


_WRITER = """
import sys, time
from pathlib import Path
import torch
from inference.store import EmbeddingStoreWriter
folder, writer_id, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
while not (folder.parent / "go").exists():
    time.sleep(0.001)
with EmbeddingStoreWriter(folder, shard_size=5) as writer:
    for start in range(0, rows, 5):
        ids = [f"w{writer_id}-{i}" for i in range(start, start + 5)]
        writer.add(torch.tensor([[writer_id, i, i % 7] for i in range(start, start + 5)], dtype=torch.float32), ids)
"""


def test_two_writer_processes_keep_every_row(tmp_path: Path):
    """Before: two writers on one store lost 190 of 400 rows without an error (shared shard names, index replaced
    by whichever wrote last)."""
    folder = tmp_path / "store"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(folder), str(w), "200"], env=env, stderr=subprocess.PIPE)
        for w in (0, 1)
    ]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    store = EmbeddingStore(folder)
    expected = {f"w{w}-{i}" for w in (0, 1) for i in range(200)}
    assert len(store) == 400 and len(store.ids) == 400 and set(store.ids) == expected
    rows = store.load()
    for row_id, row in zip(store.ids, rows.tolist()):  # every embedding sits beside its own id
        w, i = (int(x) for x in row_id[1:].split("-"))
        assert row == [w, i, i % 7]
    # Shards of the two writers interleave in the index: both really published concurrently.
    writers = [s["file"].split("-")[1] for s in store.shards]
    assert len(set(writers)) == 2


def test_reader_opened_before_an_overwrite_never_gets_new_rows_under_old_ids(tmp_path: Path):
    """Before: file names were reused, so an old reader read the new store's rows with its cached old ids."""
    folder = tmp_path / "store"
    old = torch.arange(8.0).reshape(4, 2)
    write_embedding_store(folder, old, ["a", "b", "c", "d"], shard_size=2)
    reader = EmbeddingStore(folder)
    assert reader.ids == ["a", "b", "c", "d"]
    write_embedding_store(folder, -old, ["w", "x", "y", "z"], shard_size=2)
    with pytest.raises(FileNotFoundError, match="overwritten or removed since"):
        reader.load()
    with pytest.raises(FileNotFoundError, match="overwritten or removed since"):
        exact_topk(old[:1], reader, k=1)
    fresh = EmbeddingStore(folder)
    assert fresh.ids == ["w", "x", "y", "z"] and torch.equal(fresh.load(), -old)


def test_writer_refuses_to_publish_into_a_store_overwritten_under_it(tmp_path: Path):
    folder = tmp_path / "store"
    first = EmbeddingStoreWriter(folder, shard_size=2)
    first.add(torch.ones(2, 2), ["a", "b"])  # published
    write_embedding_store(folder, torch.zeros(1, 2), ["new"])  # someone else starts over
    with pytest.raises(RuntimeError, match="overwritten or removed by another writer"):
        first.add(torch.ones(2, 2), ["c", "d"])
    store = EmbeddingStore(folder)
    assert store.ids == ["new"] and len(list(folder.glob("shard-*"))) == 1  # the refused shard was not left behind


def test_shard_written_but_not_indexed_is_invisible_and_corrupt_index_is_named(tmp_path: Path):
    folder = tmp_path / "store"
    write_embedding_store(folder, torch.ones(3, 2), ["a", "b", "c"], shard_size=2)
    (folder / "shard-crashed-00000.safetensors").write_bytes(b"partial")  # a writer died mid-shard
    assert EmbeddingStore(folder).ids == ["a", "b", "c"]
    index = json.loads((folder / "index.json").read_text())
    index["count"] = 7
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="count 7 differs from the shards' total 3"):
        EmbeddingStore(folder)
    (folder / "index.json").write_text(textwrap.dedent("{not json"))
    with pytest.raises(ValueError, match="index.json: not valid JSON"):
        EmbeddingStore(folder)
