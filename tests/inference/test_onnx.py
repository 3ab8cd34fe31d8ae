"""ONNX export (`alta-export-onnx`) and the onnxruntime encoder: the same embeddings as PyTorch to 1e-4.

Two models: the `alta-tiny` preset with random weights (non-zero adapters), exported through the Python API, and the
golden `ALTA_tiny.pth` converted with `alta-convert`, exported through the `alta-export-onnx` CLI in a subprocess.
Both are compared on real radiographs (images and studies with missing views), on texts of several lengths, and on
batch sizes other than the traced one (the batch dimension is dynamic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from inference.embedding import embed_images, embed_texts, load_model_and_processor  # noqa: E402
from inference.onnx_encoder import OnnxAltaEncoder  # noqa: E402
from inference.onnx_export import MANIFEST, AltaOnnxStudyTower, export_onnx  # noqa: E402

from ..conftest import REPO_ROOT  # noqa: E402
from ..model_folders import converted_tiny_model, tiny_preset_model  # noqa: E402


ATOL = 1e-4
REPORTS = [
    "Small left pleural effusion.",
    "The heart is enlarged. Mild interstitial edema without consolidation; no pneumothorax is seen. " * 3,
    "No acute cardiopulmonary process.",
    "Bibasilar atelectasis.",
    "Stable cardiomegaly.",
]


@pytest.fixture(scope="module")
def images(real_cxr_dir: Path) -> list[Path]:
    return sorted((real_cxr_dir / "nih").glob("*.png"))[:5]


@pytest.fixture(scope="module")
def tiny_export(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tiny_preset_model(parity_dir, tmp_path_factory.mktemp("tiny-preset"))
    out = tmp_path_factory.mktemp("tiny-onnx")
    manifest = export_onnx(folder, out)
    return folder, out, manifest


@pytest.fixture(scope="module")
def golden_export(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))
    out = tmp_path_factory.mktemp("golden-onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "inference.onnx_export", str(folder), "--output", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out / MANIFEST}" in done.stdout
    return folder, out, json.loads((out / MANIFEST).read_text())


def _studies(images: list[Path]) -> list[dict]:
    return [
        {"frontal": images[0], "lateral": images[1], "prior_frontal": images[2], "prior_lateral": images[3]},
        {"frontal": images[1]},
        {"frontal": images[2], "prior_frontal": images[4]},
        {"frontal": images[3], "lateral": images[0], "prior_lateral": images[2]},
        {"frontal": images[4], "lateral": images[2]},
    ]


@pytest.mark.parametrize("which", ["tiny_export", "golden_export"])
def test_onnxruntime_embeddings_equal_pytorch(which: str, images: list[Path], request: pytest.FixtureRequest) -> None:
    folder, out, manifest = request.getfixturevalue(which)
    assert set(manifest["towers"]) == {"image", "study", "text"}
    assert all(diff <= ATOL for diff in manifest["max_abs_diff"].values()), manifest["max_abs_diff"]
    model, processor = load_model_and_processor(folder)
    encoder = OnnxAltaEncoder(out, threads=1)
    assert encoder.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)

    # images: batches of 2 + 2 + 1 (neither 2 nor 1 is special in the graph), normalised and raw
    for normalize in (True, False):
        got = encoder.embed_images(images, batch_size=2, normalize=normalize)
        want = embed_images(model, processor, images, normalize=normalize).numpy()
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # studies: every missing-view pattern class, through the study graph with view_mask
    studies = _studies(images)
    got = encoder.embed_images(studies, batch_size=3)
    want = embed_images(model, processor, studies).numpy()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # the study path is not the image path: a frontal-only study differs from the same frontal alone
    assert np.abs(got[1] - encoder.embed_images([images[1]])[0]).max() > 1e-3
    # texts: several lengths, cut to the model's length, and whole (longer than the traced length)
    for kwargs in ({}, {"truncation": False, "max_length": 8}, {"clean_text": True}):
        got = encoder.embed_texts(REPORTS, batch_size=4, **kwargs)
        want = embed_texts(model, processor, REPORTS, **kwargs).numpy()
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_raw_features_match_and_inputs_are_checked(tiny_export) -> None:
    folder, out, manifest = tiny_export
    model, _ = load_model_and_processor(folder)
    encoder = OnnxAltaEncoder(out)
    size, slots = manifest["image_size"], manifest["num_slots"]
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 2, 3, size, size, generator=gen)  # two views given: padded to `slots` as the model does
    mask = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        want = AltaOnnxStudyTower(model)(pixels, mask).numpy()  # get_image_features, whatever it returns
    np.testing.assert_allclose(encoder.image_features(pixels.numpy(), mask.numpy()), want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=rf"at most {slots} views"):
        encoder.image_features(np.zeros((1, slots + 1, 3, size, size), np.float32))
    with pytest.raises(ValueError, match="view_mask"):
        encoder.image_features(pixels.numpy(), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="L <= "):
        limit = manifest["max_position_embeddings"]
        encoder.text_features(np.ones((1, limit + 1), np.int64), np.ones((1, limit + 1), np.int64))


def test_incomplete_or_unsafe_folders_are_refused(tiny_export, tmp_path: Path) -> None:
    _, out, manifest = tiny_export
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        OnnxAltaEncoder(tmp_path)
    bad = dict(manifest, towers={"image": {**manifest["towers"]["image"], "file": "../image.onnx"}})
    (tmp_path / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(FileNotFoundError, match="unsafe"):
        OnnxAltaEncoder(tmp_path)
    only_text = export_onnx(tiny_export[0], tmp_path / "text-only", towers=["text"], verify=False)
    assert list(only_text["towers"]) == ["text"] and only_text["max_abs_diff"] == {}
    with pytest.raises(ValueError, match="no image tower"):
        OnnxAltaEncoder(tmp_path / "text-only").embed_images([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="non-empty subset"):
        export_onnx(tiny_export[0], tmp_path / "x", towers=["vision"])
