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
