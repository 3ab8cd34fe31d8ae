"""Search over a store several times larger than the memory budget: exact top-k, and the process's peak memory
stays far below the store's size (measured in a child process through its resident-set high-water mark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inference.search import chunk_rows_for_budget, exact_topk
from inference.store import EmbeddingStore, EmbeddingStoreWriter


REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys, torch
from inference.search import search
from inference.store import EmbeddingStore

def high_water_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

queries = torch.load(sys.argv[2])
store = EmbeddingStore(sys.argv[1])
search(queries, torch.randn(64, queries.shape[1]), k=10)  # first use of the kernels (lazy library set-up) first
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current resident set
    f.write("5")
before = high_water_kib()
result = search(queries, store, k=10, memory_budget=int(sys.argv[3]))
peak = high_water_kib() - before
print(json.dumps({"peak_kib": peak, "indices": result.indices.tolist(), "ids": result.ids,
                  "scores": result.scores.tolist()}))
"""


def test_search_of_a_store_larger_than_the_budget_is_exact_and_bounded(tmp_path: Path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak resident set")
    rows, dim, budget = 60_000, 128, 4 * 2**20
    g = torch.Generator().manual_seed(0)
    with EmbeddingStoreWriter(tmp_path / "store", shard_size=20_000) as writer:
        for start in range(0, rows, 10_000):  # written in pieces: the test itself never holds the gallery twice
            writer.add(torch.randn(10_000, dim, generator=g), [f"r{i}" for i in range(start, start + 10_000)])
    store_bytes = rows * dim * 4
    assert store_bytes > 7 * budget  # several times the budget (and each shard alone is larger than it)
    queries = torch.randn(8, dim, generator=g)
    torch.save(queries, tmp_path / "queries.pt")
    # glibc raises its mmap threshold after the first large free and then serves later chunks from the heap, which
    # it keeps after they are freed: the resident set then counts the allocator's cache (up to 15 MiB measured, in
    # one run out of six) on top of what the search holds. A fixed threshold returns each freed chunk at once, so the
    # high-water mark measures the search's own live memory (2.8-4.3 MiB measured over 18 runs, some under load).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "store"), str(tmp_path / "queries.pt"),
                           str(budget)], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])

    gallery = EmbeddingStore(tmp_path / "store").load()
    cos = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    expected = torch.sort(cos, dim=1, descending=True, stable=True)
    assert result["indices"] == expected.indices[:, :10].tolist()
    assert result["ids"] == [[f"r{i}" for i in row] for row in expected.indices[:, :10].tolist()]
    torch.testing.assert_close(torch.tensor(result["scores"]), expected.values[:, :10], atol=1e-5, rtol=0)
    # The search added at most a few budgets to the process, never the store (30 MiB) or a shard (10 MiB).
    assert result["peak_kib"] * 1024 < 2.5 * budget, result["peak_kib"]


def test_chunk_rows_for_budget():
    rows = chunk_rows_for_budget(2**20, num_queries=8, dim=128, k=10)
    per_row = 4 * 128 + 8 * 128 + 16 * 8
    assert rows == (2**20 - 24 * 8 * 10 - 4 * 8 * 128) // per_row
    with pytest.raises(ValueError, match="too small"):
        chunk_rows_for_budget(1000, num_queries=8, dim=128, k=10)
    gallery = torch.randn(50, 16)
    budget = 24 * 3 * 5 + 4 * 3 * 16 + 7 * (4 * 16 + 8 * 16 + 16 * 3)  # 7 rows per chunk
    assert torch.equal(
        exact_topk(gallery[:3], gallery, k=5, memory_budget=budget).indices,
        exact_topk(gallery[:3], gallery, k=5).indices,
    )
