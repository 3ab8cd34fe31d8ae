"""The on-disk embedding store and the chunked exact top-k against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation.protocols import precision_at_k, precision_at_k_from_topk, ranked_indices
from inference.search import TopKResult, exact_topk
from inference.store import EmbeddingStore, EmbeddingStoreWriter, write_embedding_store


def _tied_gallery(n: int = 23, dim: int = 4, seed: int = 0) -> torch.Tensor:
    # Small integers: dot products are exact in float32 and many are equal, so tie-breaking is exercised.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, dim), generator=g).float()


def test_store_writes_incrementally_and_round_trips(tmp_path):
    emb = torch.arange(26 * 3, dtype=torch.float32).reshape(26, 3)
    ids = [f"s{i}" for i in range(26)]
    with EmbeddingStoreWriter(tmp_path / "store", shard_size=10) as writer:
        writer.add(emb[:7], ids[:7])
        assert len(EmbeddingStore(tmp_path / "store")) == 0  # an empty, valid store until a shard is complete
        writer.add(emb[7:15], ids[7:15])  # 15 rows buffered -> one shard of 10 written, index present
        index = json.loads((tmp_path / "store" / "index.json").read_text())
        assert (index["version"], index["count"], len(index["shards"])) == (2, 10, 1)
        assert len(EmbeddingStore(tmp_path / "store")) == 10  # readable mid-write
        writer.add(emb[15:], ids[15:])
    store = EmbeddingStore(tmp_path / "store")
    assert (len(store), store.dim, [s["count"] for s in store.shards]) == (26, 3, [10, 10, 6])
    assert store.ids == ids and store.ids_at([25, 0, 12]) == ["s25", "s0", "s12"]
    assert torch.equal(store.load(), emb)
    chunks = list(store.iter_chunks(4))
    assert [o for o, _ in chunks] == [0, 4, 8, 10, 14, 18, 20, 24]  # chunks never cross shard files
    assert torch.equal(torch.cat([c for _, c in chunks]), emb)

    # Re-opening appends; overwrite starts over and deletes the old shard files.
    with EmbeddingStoreWriter(tmp_path / "store", shard_size=10) as writer:
        writer.add(emb[:2], [100, 101])
    assert EmbeddingStore(tmp_path / "store").ids == ids + [100, 101]
    store = write_embedding_store(tmp_path / "store", emb[:3], ["a", "b", "c"])
    assert store.ids == ["a", "b", "c"] and len(list((tmp_path / "store").glob("shard-*"))) == 1


def test_store_reads_version_1_layout(tmp_path):
    """A store written by the version-1 writer (ids in a JSON file beside each shard) still opens and searches."""
    from safetensors.torch import save_file

    folder = tmp_path / "v1"
    folder.mkdir()
    emb = torch.randn(5, 4)
    save_file({"embeddings": emb[:3].contiguous()}, str(folder / "shard-00000.safetensors"))
    (folder / "shard-00000.ids.json").write_text(json.dumps(["a", "b", "c"]))
    save_file({"embeddings": emb[3:].contiguous()}, str(folder / "shard-00001.safetensors"))
    (folder / "shard-00001.ids.json").write_text(json.dumps([4, 5]))
    shards = [
        {"file": f"shard-0000{i}.safetensors", "ids_file": f"shard-0000{i}.ids.json", "count": n}
        for i, n in enumerate((3, 2))
    ]
    index = {"format": "alta-embedding-store", "version": 1, "dim": 4, "dtype": "float32", "count": 5}
    (folder / "index.json").write_text(json.dumps({**index, "shards": shards}))
    store = EmbeddingStore(folder)
    assert store.ids == ["a", "b", "c", 4, 5] and torch.equal(store.load(), emb)
    assert exact_topk(emb[4:5], store, k=1).ids == [[5]]
    with pytest.raises(ValueError, match="version-1 store"):
        EmbeddingStoreWriter(folder)
    write_embedding_store(folder, emb[:1], ["z"])  # overwrite deletes the version-1 files it wrote
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "index.json",
        next(p.name for p in folder.glob("shard-*")),
    ]


def test_store_errors(tmp_path):
    writer = EmbeddingStoreWriter(tmp_path / "s", shard_size=4)
    writer.add(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="size 5; the store .* size 3"):
        writer.add(torch.zeros(1, 5), ["c"])
    with pytest.raises(ValueError, match="2 embeddings but 1 ids"):
        writer.add(torch.zeros(2, 3), ["c"])
    with pytest.raises(TypeError, match="strings or ints"):
        writer.add(torch.zeros(1, 3), [1.5])
    with pytest.raises(FileNotFoundError, match="index.json"):
        EmbeddingStore(tmp_path / "nothing")


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_exact_topk_equals_brute_force_with_ties(tmp_path, chunk_size):
    gallery = _tied_gallery()
    queries = _tied_gallery(9, seed=1)
    store = write_embedding_store(tmp_path / "g", gallery, list(range(100, 123)), shard_size=5)
    brute = queries @ gallery.T
    expected = ranked_indices(brute, 6)  # full stable sort: ties to the lower index
    assert (brute.unsqueeze(2) == brute.unsqueeze(1)).sum() > brute.numel()  # the data does contain ties
    for source in (store, gallery):
        result = exact_topk(queries, source, k=6, chunk_size=chunk_size, normalize=False, gallery_ids=None)
        assert torch.equal(result.indices, expected)
        assert torch.equal(result.scores, brute.gather(1, expected))
    assert exact_topk(queries, store, k=6, chunk_size=chunk_size, normalize=False).ids == [
        [100 + i for i in row] for row in expected.tolist()
    ]


def test_exact_topk_cosine_and_precision(tmp_path):
    g = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(50, 8, generator=g), torch.randn(6, 8, generator=g)
    labels_g, labels_q = np.arange(50) % 3, np.arange(6) % 3
    store = write_embedding_store(tmp_path / "g", gallery, [f"r{i}" for i in range(50)], shard_size=16)
    result = exact_topk(queries, store, k=10, chunk_size=7)
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    assert torch.equal(result.indices, ranked_indices(cos, 10))
    torch.testing.assert_close(result.scores, cos.gather(1, result.indices))
    assert result.ids[0][0] == f"r{int(result.indices[0, 0])}"
    assert precision_at_k_from_topk(result, labels_q, labels_g, (5, 10)) == precision_at_k(
        cos, labels_q, labels_g, (5, 10)
    )


def test_precision_from_topk_by_hand():
    # Gallery labels a,b,a; query "a" hits 2,1 -> a,b -> P@1 1, P@2 1/2; query "b" hits 0,1 -> a,b -> P@1 0, P@2 1/2.
    result = TopKResult(scores=torch.zeros(2, 2), indices=torch.tensor([[2, 1], [0, 1]]))
    assert precision_at_k_from_topk(result, ["a", "b"], ["a", "b", "a"], (1, 2)) == {"p@1": 0.5, "p@2": 0.5}
    with pytest.raises(ValueError, match="reach 5"):
        precision_at_k_from_topk(torch.tensor([[5]]), ["a"], ["a", "b"], (1,))


def test_exact_topk_errors():
    with pytest.raises(ValueError, match="gallery size"):
        exact_topk(torch.zeros(1, 2), torch.ones(3, 2), k=4)
    with pytest.raises(ValueError, match="size 3; the gallery has size 2"):
        exact_topk(torch.zeros(1, 3), torch.ones(3, 2), k=1)
