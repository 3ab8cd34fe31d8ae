"""Inference helpers: study/image/report galleries on disk and exact search, text padding, word-patch similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.embedding import (
    default_text_length,
    embed_images,
    embed_images_to_store,
    embed_reports_to_store,
    embed_texts,
    load_model_and_processor,
)
from inference.heatmaps import model_view, word_patch_similarity
from inference.search import search
from inference.store import EmbeddingStore

from ..model_folders import converted_tiny_model


@pytest.fixture(scope="module")
def model_and_processor(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))
    return load_model_and_processor(folder)


@pytest.fixture(scope="module")
def images(real_cxr_dir: Path) -> list[Path]:
    return sorted((real_cxr_dir / "nih").glob("*.png"))[:6]


def test_study_gallery_on_disk_equals_in_memory_search(model_and_processor, images, tmp_path):
    model, processor = model_and_processor
    studies = [
        {"frontal": images[0], "lateral": images[1]},
        {"frontal": images[2]},
        {"frontal": images[3], "prior_frontal": images[0], "prior_lateral": images[1]},
        [images[4], None, images[5]],  # ordered slots with a gap
        {"frontal": images[5], "lateral": images[4], "prior_frontal": images[3]},
    ]
    ids = [f"study-{i}" for i in range(len(studies))]
    # small batches and shards: several shard files and several chunks in the search
    store = embed_images_to_store(model, processor, studies, ids, tmp_path / "studies", batch_size=2, shard_size=2)
    assert isinstance(store, EmbeddingStore) and len(store) == 5 and len(store.shards) == 3
    in_memory = embed_images(model, processor, studies, batch_size=5)
    torch.testing.assert_close(store.load(), in_memory, atol=1e-6, rtol=1e-5)
    queries = embed_images(model, processor, [images[0], images[2]])
    hits = search(queries, tmp_path / "studies", k=3, chunk_size=2)
    sim = F.normalize(queries, dim=-1) @ in_memory.T
    expected = torch.sort(sim, dim=1, descending=True, stable=True)
    assert hits.indices.tolist() == expected.indices[:, :3].tolist()
    assert hits.ids == [[ids[i] for i in row] for row in expected.indices[:, :3].tolist()]
    torch.testing.assert_close(hits.scores, expected.values[:, :3], atol=1e-5, rtol=1e-5)


def test_report_gallery_and_text_to_image_search(model_and_processor, images, tmp_path):
    model, processor = model_and_processor
    reports = ["Small left pleural effusion.", "No acute cardiopulmonary process.", "Mild cardiomegaly.", "Edema."]
    store = embed_reports_to_store(model, processor, reports, [10, 11, 12, 13], tmp_path / "reports", batch_size=3)
    torch.testing.assert_close(store.load(), embed_texts(model, processor, reports), atol=1e-6, rtol=1e-5)
    hits = search(embed_images(model, processor, images[:2]), store, k=4)
    assert sorted(hits.ids[0]) == [10, 11, 12, 13]
    assert (hits.scores[:, :-1] >= hits.scores[:, 1:]).all()
    with pytest.raises(ValueError, match="4 reports but 3 ids"):
        embed_reports_to_store(model, processor, reports, [1, 2, 3], tmp_path / "bad")


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_word_patch_similarity_definition(model_and_processor, images, reduction):
    model, processor = model_and_processor
    phrase = "left pleural effusion"
    sim = word_patch_similarity(model, processor, images[0], phrase, reduction=reduction)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert sim.shape == (grid, grid) and sim.dtype == np.float32
    pixels = processor.image_processor([images[0]], return_tensors="pt")["pixel_values"]
    enc = processor(text=[phrase], max_length=128, return_tensors="pt")
    with torch.no_grad():
        patches = F.normalize(model.get_image_patch_features(pixels)[0], dim=-1)
        tokens = model.get_text_token_features(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[0]
    n = int(enc["attention_mask"].sum())
    words = F.normalize(tokens[1 : n - 1], dim=-1)  # 'left', 'pleural', 'effusion' word pieces
    expected = (
        patches @ F.normalize(words.mean(0), dim=-1) if reduction == "mean" else (patches @ words.T).max(1).values
    )
    np.testing.assert_allclose(sim.reshape(-1), expected.numpy(), atol=1e-5, rtol=1e-5)
    assert np.all(np.abs(sim) <= 1 + 1e-5)
    view = model_view(processor, images[0])
    assert view.size == (224, 224) and view.mode == "L"


def test_bad_inputs_name_the_problem(model_and_processor, images):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="reduction"):
        word_patch_similarity(model, processor, images[0], "effusion", reduction="sum")
    with pytest.raises(ValueError, match="phrase"):
        word_patch_similarity(model, processor, images[0], "  ")
    with pytest.raises(TypeError, match="report 1: expected a string"):
        embed_texts(model, processor, ["ok", 3])
    with pytest.raises(TypeError, match="ALTA model"):
        embed_images(torch.nn.Linear(2, 2), processor, images[:1])
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_and_processor(images[0].parent)


def test_progress_bars_on_the_main_process_only(model_and_processor, images, tmp_path, capsys, monkeypatch):
    """Before: embedding a gallery was a silent loop. The bar shows the count, the rate and the time left (ETA)."""
    model, processor = model_and_processor
    embed_images(model, processor, images[:5], batch_size=2)
    err = capsys.readouterr().err
    assert "embedding images" in err and "5/5" in err and "img/s" in err and "<00:00" in err  # [elapsed<left]
    embed_reports_to_store(model, processor, ["a b c", "d e f", "g h"], [1, 2, 3], tmp_path / "r", batch_size=1)
    assert "embedding reports" in capsys.readouterr().err
    embed_images(model, processor, images[:2], batch_size=2)  # one batch: no bar
    assert "embedding images" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # another process of a launch: no bar
    embed_images_to_store(model, processor, images[:4], list("abcd"), tmp_path / "s", batch_size=2)
    embed_texts(model, processor, ["a b", "c d", "e f"], batch_size=1)
    assert "embedding" not in capsys.readouterr().err


def test_text_length_comes_from_the_processor(model_and_processor):
    """A converted folder's processor carries the reference's 128 tokens; the model config has no text length."""
    model, processor = model_and_processor
    assert default_text_length(processor) == processor.max_length == 128
    with pytest.raises(TypeError, match="takes the processor"):
        default_text_length(model)


def test_texts_are_padded_per_chunk_and_come_back_in_order(model_and_processor):
    """Chunks padded to their longest text (sorted by length or not) give the features of texts padded to 128."""
    from modeling_alta.processing_alta import encode_texts

    model, processor = model_and_processor
    texts = ["no acute process", "small left pleural effusion with bibasilar atelectasis", "cardiomegaly",
             "", "the heart is enlarged. there is a small right effusion. no pneumothorax."] * 3  # fmt: skip
    enc = encode_texts(processor.tokenizer, texts, 128, allow_empty=True, return_tensors="pt")
    with torch.no_grad():
        padded = model.get_text_features(**enc).pooler_output
    expected = torch.nn.functional.normalize(padded, dim=-1)
    for sort in (True, False):
        for batch_size in (1, 4, 64):
            got = embed_texts(model, processor, texts, batch_size=batch_size, sort_by_length=sort, progress=False)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"sort={sort} batch={batch_size}")
    # chunks are padded to their own longest text: the short ones never reach 128 positions
    seen = []
    hook = model.text_model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    try:
        embed_texts(model, processor, texts, batch_size=3, progress=False)
    finally:
        hook.remove()
    longest = int(enc["attention_mask"].sum(1).max())
    assert max(seen) == longest < 128 and sorted(seen, reverse=True) == seen and min(seen) < longest
