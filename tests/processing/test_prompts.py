"""The CheXpert 5x200 prompt grid against the official strings, and the ensemble helpers."""

from __future__ import annotations

import json
import random

import pytest

from processing.prompts import (
    CHEXPERT_5X200_CLASSES,
    chexpert_5x200_prompts,
    flatten_prompt_ensemble,
    map_prompts,
    prompt_grid,
    prompts_from_templates,
    rsna_pneumonia_prompts,
    validate_prompt_ensemble,
)


@pytest.fixture(scope="module")
def golden(parity_dir):
    return json.loads((parity_dir / "zeroshot.json").read_text())


def test_full_grid_matches_official_strings_in_order(golden):
    ensemble = chexpert_5x200_prompts()
    assert list(ensemble) == golden["class_order"] == list(CHEXPERT_5X200_CLASSES)
    assert ensemble == golden["prompts"]
    assert {k: len(v) for k, v in ensemble.items()} == golden["num_prompts"]
    assert sum(len(v) for v in ensemble.values()) == 489


def test_reference_n_10000_is_the_full_grid(golden):
    assert chexpert_5x200_prompts(n=10000) == golden["prompts"]


def test_typos_and_duplicate_kept():
    ensemble = chexpert_5x200_prompts()
    assert "apperance of patchy consolidation at the right uppper lobe" in ensemble["Consolidation"]
    assert "presistent pulmonary edema" in ensemble["Edema"]
    effusion = ensemble["Pleural Effusion"]
    assert len(effusion) == 54 and len(set(effusion)) == 36
    # Severity outermost, then side, then subtype; the repeated subtype gives equal neighbours two apart.
    assert effusion[:3] == [
        "left bilateral pleural effusion",
        "left subpulmonic pleural effusion",
        "left bilateral pleural effusion",
    ]


def test_sampling_is_seeded_and_without_replacement():
    a = chexpert_5x200_prompts(n=5, rng=random.Random(3))
    b = chexpert_5x200_prompts(n=5, rng=random.Random(3))
    assert a == b
    assert len(a["Atelectasis"]) == 5 and len(set(a["Atelectasis"])) == 5
    # Edema has 18 prompts, Cardiomegaly 15: n=16 samples Edema but keeps Cardiomegaly whole and in order.
    c = chexpert_5x200_prompts(n=16)
    assert c["Cardiomegaly"] == chexpert_5x200_prompts()["Cardiomegaly"]
    assert len(c["Edema"]) == 16


def test_rsna_prompts(golden):
    rsna = rsna_pneumonia_prompts()
    assert list(rsna.values()) == [golden["rsna"]["pos_query"], golden["rsna"]["neg_query"]]


def test_prompt_grid_strips_empty_parts():
    assert prompt_grid([["", "mild"], ["edema"], ["", "at the base"]]) == [
        "edema",
        "edema at the base",
        "mild edema",
        "mild edema at the base",
    ]
    with pytest.raises(ValueError, match=r"parts\[1\]"):
        prompt_grid([["a"], []])


def test_templates_flatten_and_map():
    ensemble = prompts_from_templates(["edema", "cardiomegaly"], ["There is {}.", "{} is seen"])
    assert ensemble == {
        "edema": ["There is edema.", "edema is seen"],
        "cardiomegaly": ["There is cardiomegaly.", "cardiomegaly is seen"],
    }
    prompts, index, names = flatten_prompt_ensemble(ensemble)
    assert prompts == ["There is edema.", "edema is seen", "There is cardiomegaly.", "cardiomegaly is seen"]
    assert index == [0, 0, 1, 1] and names == ["edema", "cardiomegaly"]
    assert map_prompts({"a": "X Y"}, str.lower) == {"a": ["x y"]}
    with pytest.raises(ValueError, match="placeholder"):
        prompts_from_templates(["a"], ["no slot"])


def test_validate_prompt_ensemble_errors_name_the_class():
    with pytest.raises(ValueError, match="'edema' .* no prompts"):
        validate_prompt_ensemble({"edema": []})
    with pytest.raises(ValueError, match="'edema'.*''"):
        validate_prompt_ensemble({"edema": ["ok", ""]})
    with pytest.raises(ValueError, match="non-empty mapping"):
        validate_prompt_ensemble({})
