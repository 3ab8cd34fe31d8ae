"""Inputs a user can get wrong at the inference API: no candidate labels, k larger than the gallery, a 3x3 image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.search import search

from ..model_folders import converted_tiny_model


@pytest.fixture(scope="module")
def folder(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))


def test_the_pipeline_with_no_candidate_labels_or_a_tiny_image(folder):
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    image = Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    # Documented (README, Use): the ALTA pipeline refuses the empty label list before any model work (the built-in
    # one failed with an IndexError in the tokenizer).
    with pytest.raises(ValueError, match="`candidate_labels` is an empty list"):
        classifier(image, candidate_labels=[], hypothesis_template="{}")
    tiny = Image.fromarray(np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image 0: PIL image \w+ 3x3 is 3x3 pixels, smaller than min_image_size=16"):
        classifier(tiny, candidate_labels=["effusion", "edema"], hypothesis_template="{}")
    assert len(classifier(image, candidate_labels=["effusion", "edema"], hypothesis_template="{}")) == 2


def test_zero_shot_classifier_needs_classes(folder):
    from inference.embedding import load_model_and_processor
    from inference.zero_shot import ZeroShotClassifier

    model, processor = load_model_and_processor(folder)
    with pytest.raises(ValueError, match=r"prompt ensemble must be a non-empty mapping"):
        ZeroShotClassifier(model, processor, {})


def test_search_refuses_k_larger_than_the_gallery():
    with pytest.raises(ValueError, match=r"`k` must lie in \[1, 3\] \(the gallery size\); got 5"):
        search(torch.randn(2, 8), torch.randn(3, 8), k=5)
    assert search(torch.randn(2, 8), torch.randn(3, 8), k=3).indices.shape == (2, 3)
