"""The ALTA pipelines in process (the remote-code path is tested in tests/hub/test_pipeline.py): argument forms,
errors, batching with workers and generators, reusable class embeddings, unnormalised features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_alta import AltaImageProcessor, AltaModel
from modeling_alta.pipeline_alta import (
    AltaClassEmbeddings,
    AltaImageFeatureExtractionPipeline,
    AltaZeroShotImageClassificationPipeline,
    pooled_embeddings,
)


@pytest.fixture(scope="module")
def parts(parity_dir: Path, tiny_config_module):
    torch.manual_seed(0)
    model = AltaModel(tiny_config_module).eval()
    tokenizer = BertTokenizer.from_pretrained(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    size = tiny_config_module.vision_config.image_size
    return model, tokenizer, AltaImageProcessor.for_vision_config(tiny_config_module.vision_config), size


@pytest.fixture(scope="module")
def tiny_config_module():
    from configuration import load_preset

    return load_preset("alta-tiny")


def _same(a: list, b: list) -> bool:
    """Equal results up to float noise of different batch compositions (labels matched by name)."""
    if isinstance(a, dict) or (a and isinstance(a[0], dict)):
        x, y = {r["label"]: r["score"] for r in a}, {r["label"]: r["score"] for r in b}
        return x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-6 for k in x)
    return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8), "L") for _ in range(n)]


def test_zero_shot_argument_forms_and_errors(parts):
    model, tokenizer, image_processor, _ = parts
    clf = AltaZeroShotImageClassificationPipeline(model=model, tokenizer=tokenizer, image_processor=image_processor)
    images = _images(4)
    calls = []
    original = model.get_text_features
    model.get_text_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        classes = clf.encode_classes(["effusion", "normal"], hypothesis_template="{}")
        assert isinstance(classes, AltaClassEmbeddings) and classes.embeddings.shape == (2, 128) and len(calls) == 1
        reused = clf(images, candidate_labels=classes, batch_size=3)
        assert len(calls) == 1  # ready class embeddings: no text forward at all
    finally:
        del model.get_text_features
    direct = clf(images, candidate_labels=["effusion", "normal"], hypothesis_template="{}")
    assert _same(reused, direct) and len(direct) == 4 and all(len(r) == 2 for r in direct)
    # A mixed batch of images and studies, decoded in a DataLoader worker, equals one-by-one calls.
    mixed = [images[0], {"frontal": images[1], "lateral": images[2]}, images[3], {"frontal": images[0]}]
    batched = clf(mixed, candidate_labels=classes, batch_size=3, num_workers=1)
    assert _same(batched, [clf(x, candidate_labels=classes) for x in mixed])
    streamed = clf((x for x in mixed), candidate_labels=classes, batch_size=2)  # a generator streams lazily
    assert _same(list(streamed), batched)
    assert _same(clf(images=images[0], candidate_labels=classes), direct[0])  # the built-in's older keyword
    with pytest.raises(
        ValueError, match="unknown prompt ensemble 'chexpert'; available: \\['chexpert5x200', 'rsna'\\]"
    ):
        clf(images[0], candidate_labels="chexpert")
    with pytest.raises(ValueError, match="`candidate_labels` is required"):
        clf(images[0])
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) \\['top_k'\\]"):
        clf(images[0], candidate_labels=classes, top_k=1)
    with pytest.raises(TypeError, match="nested list is not an input"):
        clf([[images[0], images[1]]], candidate_labels=classes)
    with pytest.raises(ValueError, match="empty list"):
        clf([], candidate_labels=classes)
    with pytest.raises(ValueError, match="unknown slot name"):
        clf({"frontal": images[0], "side": images[1]}, candidate_labels=classes)


def test_feature_extraction_options(parts):
    model, _, image_processor, _ = parts
    embed = AltaImageFeatureExtractionPipeline(model=model, image_processor=image_processor)
    images = _images(2)
    study = {"frontal": images[0], "prior_frontal": images[1]}
    out = embed([images[0], study], return_tensors=True, batch_size=2)
    assert [tuple(o.shape) for o in out] == [(1, 128), (1, 128)]
    assert torch.allclose(torch.stack([o.norm() for o in out]), torch.ones(2), atol=1e-6)
    raw = embed(study, normalize=False, return_tensors=True)
    pixels = image_processor(images=[study], return_tensors="pt")
    with torch.no_grad():
        expected = pooled_embeddings(model.get_image_features(pixels["pixel_values"], view_mask=pixels["view_mask"]))
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=0)
    assert isinstance(embed(images[0]), list) and len(embed(images[0])[0]) == 128  # nested list, as built in
    with pytest.raises(ValueError, match="pool=False"):
        embed(images[0], pool=False)


def test_pooled_embeddings_accepts_tensors_and_model_outputs():
    x = torch.randn(2, 4)
    assert pooled_embeddings(x) is x
    assert pooled_embeddings(BaseModelOutputWithPooling(last_hidden_state=x[:, None], pooler_output=x)) is x
    with pytest.raises(TypeError, match="pooler_output"):
        pooled_embeddings((x,))


@pytest.mark.parametrize(("name", "allowed"), [("pipeline_alta", {"torch", "transformers"}), ("prompts_alta", set())])
def test_shipped_pipeline_files_need_only_torch_and_transformers(name, allowed):
    """What a user without this package needs for the pipelines: torch, transformers (Pillow, numpy and optionally
    pydicom come through the image processor's files, checked in tests/processing/test_processing_alta.py)."""
    import sys

    from transformers.dynamic_module_utils import get_imports

    import modeling_alta

    path = Path(modeling_alta.__file__).parent / f"{name}.py"
    assert {module for module in get_imports(path) if module not in sys.stdlib_module_names} <= allowed
