"""ZeroShotClassifier: reference parity of class embeddings and logits, text tower run once, file cache, studies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inference.embedding import embed_images, load_model_and_processor, pixel_inputs
from inference.zero_shot import ZeroShotClassifier, prompt_preset

from ..model_folders import converted_tiny_model


@pytest.fixture(scope="module")
def model_and_processor(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))
    return load_model_and_processor(folder)


def _count_text_calls(model, monkeypatch) -> list[int]:
    calls = []
    original = model.get_text_features

    def counting(*args, **kwargs):
        calls.append(int(kwargs.get("input_ids", args[0] if args else None).shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "get_text_features", counting)
    return calls


def test_chexpert_grid_matches_the_reference_goldens(model_and_processor, parity_dir):
    model, processor = model_and_processor
    golden = load_file(str(parity_dir / "zeroshot.safetensors"))
    images = load_file(str(parity_dir / "img_feature.safetensors"))
    clf = ZeroShotClassifier(model, processor, "chexpert5x200", clean_text=True, max_length=128)
    torch.testing.assert_close(clf.class_embeddings, golden["class_features"], atol=1e-5, rtol=1e-5)
    pred = clf.predict(images["x"].float(), batch_size=3)
    torch.testing.assert_close(pred.logits, golden["logits"], atol=1e-5, rtol=1e-5)
    assert pred.predictions.tolist() == golden["logits"].argmax(1).tolist()
    torch.testing.assert_close(pred.probabilities.sum(1), torch.ones(4))
    scaled = torch.softmax(model.logit_scale.exp().detach() * golden["logits"], dim=-1)
    torch.testing.assert_close(pred.probabilities, scaled, atol=1e-5, rtol=1e-5)


def test_class_embeddings_are_computed_once(model_and_processor, parity_dir, monkeypatch):
    model, processor = model_and_processor
    calls = _count_text_calls(model, monkeypatch)
    x = load_file(str(parity_dir / "img_feature.safetensors"))["x"].float()
    clf = ZeroShotClassifier(model, processor, "chexpert5x200", text_batch_size=256)
    assert calls == []  # lazy: nothing before the first prediction
    clf.predict(x, batch_size=1)  # four image batches
    clf.predict(x[:2], batch_size=1)
    assert calls == [256, 489 - 256]  # all 489 prompts, once


def test_file_cache_is_keyed_by_model_and_prompts(model_and_processor, tmp_path, monkeypatch):
    model, processor = model_and_processor
    prompts = {"effusion": ["pleural effusion", "small left pleural effusion"], "normal": ["lungs are clear"]}
    first = ZeroShotClassifier(model, processor, prompts, cache_dir=tmp_path)
    expected = first.class_embeddings
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    calls = _count_text_calls(model, monkeypatch)
    again = ZeroShotClassifier(model, processor, prompts, cache_dir=tmp_path)
    assert torch.equal(again.class_embeddings, expected) and calls == []
    other = ZeroShotClassifier(model, processor, {**prompts, "normal": ["no acute process"]}, cache_dir=tmp_path)
    assert other.cache_key() != again.cache_key()
    other.class_embeddings  # noqa: B018
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 2
    # a different model (one text-projection weight changed) gets a different key
    weight = model.text_projection.dense_to_output.weight
    key = again.cache_key()
    with torch.no_grad():
        weight[0, 0] += 1.0
    try:
        assert ZeroShotClassifier(model, processor, prompts, cache_dir=tmp_path).cache_key() != key
    finally:
        with torch.no_grad():
            weight[0, 0] -= 1.0


def test_studies_use_the_multiview_path(model_and_processor, real_cxr_dir):
    model, processor = model_and_processor
    nih = sorted((real_cxr_dir / "nih").glob("*.png"))[:3]
    studies = [{"frontal": nih[0], "lateral": nih[1]}, {"frontal": nih[2], "prior_frontal": nih[0]}]
    clf = ZeroShotClassifier(model, processor, prompt_preset("demo"), clean_text=False)
    pred = clf.predict(studies)
    inputs = pixel_inputs(processor, studies)
    assert inputs["pixel_values"].shape[:2] == (2, 4)
    assert inputs["view_mask"].tolist() == [[True, True, False, False], [True, False, True, False]]
    with torch.no_grad():
        feats = model.get_image_features(inputs["pixel_values"], view_mask=inputs["view_mask"]).pooler_output
    expected = torch.nn.functional.normalize(feats, dim=-1) @ clf.class_embeddings.T
    torch.testing.assert_close(pred.logits, expected, atol=1e-6, rtol=1e-5)
    # a study differs from its frontal alone (the lateral/prior contribute)
    frontal_only = clf.predict([nih[0], nih[2]])
    assert not torch.allclose(frontal_only.logits, pred.logits)
    assert len(pred.labels) == 2 and set(pred.labels) <= set(clf.class_names)
    # one study alone is accepted
    assert clf.predict(studies[0]).logits.shape == (1, 6)


def test_bad_prompts_are_reported(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="'effusion'"):
        ZeroShotClassifier(model, processor, {"effusion": []})
    with pytest.raises(ValueError, match="unknown prompt preset"):
        ZeroShotClassifier(model, processor, "chexpert")


def test_single_image_and_embeddings_agree(model_and_processor, real_cxr_dir):
    model, processor = model_and_processor
    image = sorted((real_cxr_dir / "nih").glob("*.png"))[0]
    clf = ZeroShotClassifier(model, processor, "demo", clean_text=False)
    one = clf.predict(image)
    direct = clf.scores_from_embeddings(embed_images(model, processor, [image]))
    assert torch.equal(one.logits, direct.logits)


def test_predict_accepts_batches_of_any_iterable(model_and_processor, real_cxr_dir):
    from PIL import Image

    model, processor = model_and_processor
    paths = sorted((real_cxr_dir / "nih").glob("*.png"))[:2]
    clf = ZeroShotClassifier(model, processor, "demo", clean_text=False)
    batch = clf.predict(paths).logits
    assert torch.equal(clf.predict(tuple(paths)).logits, batch)
    assert torch.equal(clf.predict(p for p in paths).logits, batch)  # any iterable, e.g. a `datasets` column
    torch.testing.assert_close(clf.predict(Image.open(paths[0])).logits, batch[:1], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The class-embedding cache (issue 12): keyed on everything that changes the text embedding, verified on load, safe
# for concurrent writers
# ---------------------------------------------------------------------------------------------------------------

PROMPTS = {"effusion": ["pleural effusion", "small left pleural effusion"], "normal": ["lungs are clear"]}


def test_class_embeddings_follow_the_adapter_state_in_memory_and_on_disk(model_and_processor, tmp_path):
    model, processor = model_and_processor
    clf = ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path)
    with_adapters = clf.class_embeddings.clone()
    model.disable_alta_adapters()
    try:
        backbone = clf.compute_class_embeddings()
        assert not torch.allclose(backbone, with_adapters, atol=1e-3)  # the adapters matter for this text tower
        torch.testing.assert_close(clf.class_embeddings, backbone)  # the same instance notices the switch
        fresh = ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path)
        torch.testing.assert_close(fresh.class_embeddings, backbone)  # and the file of the other state is not used
        assert len(list(tmp_path.glob("*.safetensors"))) == 2
    finally:
        model.enable_alta_adapters()
    torch.testing.assert_close(clf.class_embeddings, with_adapters)


def test_in_place_weight_changes_invalidate_the_embeddings(model_and_processor, monkeypatch):
    model, processor = model_and_processor
    clf = ZeroShotClassifier(model, processor, PROMPTS)
    before = clf.class_embeddings.clone()
    calls = _count_text_calls(model, monkeypatch)
    clf.class_embeddings  # noqa: B018
    assert calls == []  # unchanged model: kept
    weight = model.text_projection.dense_to_output.weight
    with torch.no_grad():
        weight.mul_(2.0)  # e.g. an optimizer step
    try:
        after = clf.class_embeddings
        assert calls and not torch.allclose(after, before)
    finally:
        with torch.no_grad():
            weight.div_(2.0)


def test_the_key_covers_config_and_tokenizer(model_and_processor):
    model, processor = model_and_processor
    key = ZeroShotClassifier(model, processor, PROMPTS).cache_key()
    config = model.config.text_config
    previous = config.hidden_act
    config.hidden_act = "relu"
    try:
        assert ZeroShotClassifier(model, processor, PROMPTS).cache_key() != key
    finally:
        config.hidden_act = previous
    tokenizer = processor.tokenizer
    lower = tokenizer.do_lower_case
    try:
        tokenizer.do_lower_case = not lower
        assert ZeroShotClassifier(model, processor, PROMPTS).cache_key() != key
    finally:
        tokenizer.do_lower_case = lower
    assert ZeroShotClassifier(model, processor, PROMPTS).cache_key() == key


def test_a_planted_or_damaged_cache_file_is_not_used(model_and_processor, tmp_path, caplog):
    from safetensors.torch import save_file

    model, processor = model_and_processor
    clf = ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path)
    expected = clf.compute_class_embeddings()
    key = clf.cache_key()
    path = clf._cache_file(key)
    planted = torch.nn.functional.normalize(torch.randn(2, expected.shape[1]), dim=-1)
    cases = {
        "written for another model": {"class_names": '["effusion", "normal"]', "key": "0" * 64},
        "no key at all": {"class_names": '["effusion", "normal"]'},
    }
    for reason, metadata in cases.items():
        save_file({"class_embeddings": planted}, str(path), metadata=metadata)
        caplog.clear()
        got = ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path).class_embeddings
        torch.testing.assert_close(got, expected, msg=reason)
        assert any(f"class-embedding cache {path} is not used" in r.getMessage() for r in caplog.records), reason
    path.write_bytes(path.read_bytes()[:50])  # truncated
    torch.testing.assert_close(
        ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path).class_embeddings, expected
    )
    assert load_file(str(path))["class_embeddings"].shape == expected.shape  # replaced by a good file


def test_concurrent_cache_writers_never_fail(model_and_processor, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    model, processor = model_and_processor
    key = ZeroShotClassifier(model, processor, PROMPTS).cache_key()
    embeds = ZeroShotClassifier(model, processor, PROMPTS).compute_class_embeddings()

    def rebuild(worker: int) -> int:
        clf = ZeroShotClassifier(model, processor, PROMPTS, cache_dir=tmp_path)
        for _ in range(40):
            clf._store(clf._cache_file(key), key, embeds)  # what every process writing the cache does at once
            assert clf._load_cached(clf._cache_file(key), key) is not None  # readers never see half a file
        return worker

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(rebuild, range(8))) == list(range(8))
    assert [p.name for p in tmp_path.iterdir()] == [f"alta-class-embeddings-{key[:32]}.safetensors"]


def test_predict_shows_progress_and_names_the_failing_batch(model_and_processor, real_cxr_dir, tmp_path, capsys):
    model, processor = model_and_processor
    paths = sorted((real_cxr_dir / "nih").glob("*.png"))[:3]
    clf = ZeroShotClassifier(model, processor, "demo", clean_text=False)
    clf.predict(paths, batch_size=1)
    err = capsys.readouterr().err
    assert "zero-shot" in err and "3/3" in err  # a tqdm bar (with its time estimate)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"in the batch of items 2\.\.2: image 0: .*broken\.png"):
        clf.predict([*paths[:2], broken], batch_size=1, progress=False)
    with pytest.raises(ValueError, match="`images` is empty"):
        clf.predict([])
