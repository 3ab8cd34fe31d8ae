"""The evaluation pictures are written as valid PNGs of sensible size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


pytest.importorskip("matplotlib")

from evaluation.plots import (  # noqa: E402
    figure_to_image,
    plot_confusion_matrix,
    plot_retrieval_examples,
    plot_similarity_heatmap,
    similarity_heatmap_figure,
    similarity_overlay,
    upsample_similarity,
)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_side=200, max_side=4000):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("L"))
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    assert pixels.std() > 5  # something was drawn
    return width, height


def test_confusion_matrix_png(tmp_path):
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "No Finding"]
    matrix = np.arange(36).reshape(6, 6) % 7
    for normalize in (False, True):
        out = plot_confusion_matrix(matrix, names, tmp_path / f"cm_{normalize}.png", normalize=normalize)
        _check_png(out)
    with pytest.raises(ValueError, match=r"\[C, C\] with C = 2"):
        plot_confusion_matrix(matrix, names[:2], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="PNG"):
        plot_confusion_matrix(matrix, names, tmp_path / "cm.jpg")


def test_retrieval_sheet_images_and_texts(tmp_path):
    rng = np.random.default_rng(0)
    images = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(4)]
    # Image -> text row and text -> image row in one sheet, with relevance frames.
    out = plot_retrieval_examples(
        queries=[images[0], "Moderate left pleural effusion with blunting of the costophrenic angle."],
        hits=[["Small left pleural effusion.", "Mild cardiomegaly.", "The lungs are clear."], images[1:]],
        scores=[[0.81, 0.52, 0.40], [0.77, 0.70, 0.12]],
        relevant=[[True, False, False], [True, True, False]],
        query_captions=["Pleural Effusion", "Pleural Effusion"],
        path=tmp_path / "sheet.png",
        title="demo retrieval",
    )
    width, height = _check_png(out)
    assert width > height  # four columns, two rows
    with pytest.raises(ValueError, match="row 0: 2 hits but 1 scores"):
        plot_retrieval_examples([images[0]], [images[1:3]], [[0.1]], tmp_path / "bad.png")


def test_similarity_heatmap(tmp_path):
    image = np.zeros((3, 224, 224), dtype=np.float32) - 1.0  # a normalised [C, H, W] model input
    image[:, 60:160, 40:180] = 1.5
    similarity = np.zeros((14, 14), dtype=np.float32)
    similarity[9:12, 3:6] = 0.8
    out = plot_similarity_heatmap(image, similarity, tmp_path / "heat.png", phrase="left pleural effusion")
    _check_png(out)
    up = upsample_similarity(similarity, (224, 224))
    assert up.shape == (224, 224)
    assert up[168, 72] == pytest.approx(0.8) and up[20, 200] == 0.0  # the hot patch lands where it was
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        plot_similarity_heatmap(image, np.zeros(196), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="vmax"):
        plot_similarity_heatmap(image, similarity, tmp_path / "bad.png", vmax=0)


def test_heatmap_colour_scale_is_fixed_not_stretched():
    """Noise stays (nearly) invisible, a map and its double are drawn differently, signs get opposite colours:
    none of which holds under the per-image min-max scaling the heatmap used to have."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.01, 0.01, (14, 14)).astype(np.float32)
    overlay = similarity_overlay(noise, (112, 112), vmax=1.0, alpha=0.7)
    assert overlay.shape == (112, 112, 4)
    assert overlay[..., 3].max() <= 0.7 * 0.01 + 1e-6  # at most 0.7 % opaque
    # min-max scaling would stretch the same noise over the whole range, fully opaque somewhere
    stretched = (noise - noise.min()) / (noise.max() - noise.min())
    assert stretched.max() == 1.0 and stretched.min() == 0.0

    signal = np.zeros((14, 14), dtype=np.float32)
    signal[2:5, 9:12] = 0.4
    signal[10:12, 1:3] = -0.4
    weak, strong = similarity_overlay(signal, (112, 112)), similarity_overlay(2 * signal, (112, 112))
    hot, cold, background = (28, 84), (86, 12), (60, 60)  # pixel centres of the positive, negative and empty patches
    assert strong[hot][3] == pytest.approx(2 * weak[hot][3]) and strong[hot][3] == pytest.approx(0.7 * 0.8)
    assert weak[hot][0] > weak[hot][2] and weak[cold][2] > weak[cold][0]  # red for positive, blue for negative
    assert weak[background][3] == 0.0
    # values beyond the scale are clipped, not rescaled
    np.testing.assert_allclose(
        similarity_overlay(5 * signal, (112, 112))[hot], similarity_overlay(3 * signal, (112, 112))[hot]
    )


def test_heatmap_figure_renders_to_an_image():
    image = (np.random.default_rng(1).random((128, 128)) * 255).astype(np.uint8)
    similarity = np.full((8, 8), 0.05, dtype=np.float32)
    picture = figure_to_image(similarity_heatmap_figure(image, similarity, phrase="edema", vmax=0.5))
    assert picture.mode == "RGB" and picture.width > picture.height > 200
    assert np.asarray(picture).std() > 5
