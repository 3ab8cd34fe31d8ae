"""The synthetic demo studies: determinism, splits, balance, the lateral-only cue, change wording, export."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from processing.demo_data import (
    _NORMALS,
    CHANGE_PHRASES,
    DEMO_CLASSES,
    FINDING_WORDS,
    IMAGE_COLUMNS,
    _Anatomy,
    _FindingState,
    _frontal,
    _lateral,
    demo_class_prompts,
    generate_demo_dataset,
    generate_study,
    strip_boilerplate,
    write_demo_folder,
)


@pytest.fixture(scope="module")
def demo():
    return generate_demo_dataset(num_studies=120, seed=3, image_size=64)


def _rows(ds):
    return [ds[i] for i in range(len(ds))]


def test_deterministic_by_seed():
    a = generate_demo_dataset(num_studies=24, seed=1, image_size=64)
    b = generate_demo_dataset(num_studies=24, seed=1, image_size=64)
    c = generate_demo_dataset(num_studies=24, seed=2, image_size=64)
    for split in ("train", "validation", "test"):
        assert a[split].data.equals(b[split].data)  # identical arrow tables, image bytes included
    assert a["train"]["report"][:] != c["train"]["report"][:]


def test_splits_disjoint_and_sized(demo):
    assert {k: len(v) for k, v in demo.items()} == {"train": 84, "validation": 12, "test": 24}
    seen_studies, seen_patients = set(), set()
    for ds in demo.values():
        studies, patients = set(ds["study_id"]), set(ds["patient_id"])
        assert len(studies) == len(ds) and not studies & seen_studies and not patients & seen_patients
        seen_studies |= studies
        seen_patients |= patients


def test_classes_balanced_in_every_split(demo):
    for ds in demo.values():
        counts = Counter(ds["label"])
        assert set(counts) == set(DEMO_CLASSES)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_columns_images_and_missing_views(demo):
    rows = _rows(demo["train"])
    first = rows[0]["frontal"]
    assert first.size == (64, 64) and first.mode == "L"
    assert all(r["frontal"] is not None for r in rows)
    assert any(r["lateral"] is None for r in rows) and any(r["lateral"] is not None for r in rows)
    assert any(r["prior_frontal"] is None for r in rows) and any(r["prior_frontal"] is not None for r in rows)
    for r in rows:
        if r["prior_frontal"] is None:
            assert r["prior_lateral"] is None
        if r["lateral"] is None:
            assert r["prior_lateral"] is None
            assert "lateral" not in r["report"].split("IMPRESSION:")[0].split(".")[0].lower()


def test_reports_mention_change_against_prior(demo):
    rows = [r for ds in demo.values() for r in _rows(ds)]
    with_prior = [r for r in rows if r["prior_frontal"] is not None]
    assert with_prior and {r["change"] for r in with_prior if r["label"] != "No Finding"} == set(CHANGE_PHRASES)
    all_phrases = [p for phrases in CHANGE_PHRASES.values() for p in phrases]
    for r in rows:
        if r["prior_frontal"] is None:
            assert r["change"] is None
            assert not any(p in r["report"] for p in all_phrases), r["report"]
        else:
            assert any(p in r["report"] for p in CHANGE_PHRASES[r["change"]]), (r["change"], r["report"])
        assert r["report"].startswith("FINDINGS: ") and " IMPRESSION: " in r["report"]
        assert len(r["report"].split(". ")) >= 3  # several sentences


def test_reports_vary_in_wording(demo):
    effusion = [r["report"].split("IMPRESSION:")[0] for r in _rows(demo["train"]) if r["label"] == "Pleural Effusion"]
    assert len(set(effusion)) == len(effusion)


def test_finding_words_leave_no_word_that_names_the_class(demo):
    """With `FINDING_WORDS` masked (the demo's MLM rule), what a report still shows is the same vocabulary for every
    class: the normal statements no longer depend on the finding, and every word of the finding and impression
    sentences is in the list."""
    import re

    rows = [r for ds in demo.values() for r in _rows(ds)]
    visible: dict[str, set[str]] = {}
    for r in rows:
        report = strip_boilerplate(r["report"])
        words = re.findall(r"\w+|[^\w\s]", report.lower())
        visible.setdefault(r["label"], set()).update(w for w in words if w not in FINDING_WORDS)
        finding_part = report.replace("FINDINGS:", " ").replace("IMPRESSION:", " ")
        for phrase in [p for ps in CHANGE_PHRASES.values() for p in ps] + [p for ps in _NORMALS.values() for p in ps]:
            finding_part = finding_part.replace(phrase, " ")
        leftover = set(re.findall(r"\w+|[^\w\s]", finding_part.lower())) - set(FINDING_WORDS)
        assert not leftover, (leftover, report)
    # change phrases are drawn the same way for every finding (they say "a finding", not which one: No Finding is
    # unchanged), so with 120 studies a rare one can fall in one class by chance; they are left out of the check
    change_words = {w for ps in CHANGE_PHRASES.values() for p in ps for w in re.findall(r"\w+", p.lower())}
    labelled = {
        w: {label for label, ws in visible.items() if w in ws}
        for ws in visible.values()
        for w in ws
        if w not in change_words
    }
    only_one_class = {w: labels for w, labels in labelled.items() if len(labels) == 1}
    assert not only_one_class, only_one_class


def test_lateral_only_cue_is_invisible_on_the_frontal():
    anatomy = _Anatomy(dx=0.0, dy=0.0, scale=1.0, heart_w=0.23, lung_w=0.28, lung_h=0.55, contrast=1.0, rib_phase=0.0)
    healthy = _FindingState("No Finding", 0.0, "", False, 0)
    posterior = _FindingState("Pleural Effusion", 0.55, "right", True, 0)
    frontal_effusion = _FindingState("Pleural Effusion", 0.55, "right", False, 0)

    def render(fn, finding):
        return fn(128, anatomy, finding, np.random.default_rng(0)).astype(int)

    # Frontal: the posterior effusion leaves the image bit-identical to the healthy one; a frontal effusion does not.
    assert np.array_equal(render(_frontal, posterior), render(_frontal, healthy))
    assert np.abs(render(_frontal, frontal_effusion) - render(_frontal, healthy)).max() > 60
    # Lateral: the posterior costophrenic angle (lower right, the back of the chest) brightens strongly.
    diff = render(_lateral, posterior) - render(_lateral, healthy)
    assert diff[80:95, 75:95].mean() > 40  # posterior-inferior region (rows 72-96, columns 65-97 of 128 change)
    assert np.abs(diff[20:50, 20:60]).max() == 0  # anterior-superior lung untouched


def test_lateral_only_studies_always_have_a_lateral(demo):
    rows = [r for ds in demo.values() for r in _rows(ds) if r["lateral_only"]]
    assert rows, "the demo must contain lateral-only findings"
    for r in rows:
        assert r["label"] == "Pleural Effusion" and r["lateral"] is not None
        assert "lateral view" in r["report"]


def test_findings_change_the_image_by_severity():
    # Same study drawn as "new" (prior without finding): the prior frontal differs from the current one mostly by
    # the finding, so the current image is brighter over the lungs for an opacity.
    for label in ("Consolidation", "Edema", "Cardiomegaly"):
        for i in range(40):
            s = generate_study(label, np.random.default_rng([9, i]), image_size=64, prior_rate=1.0)
            if s.change == "new":
                break
        assert s.change == "new" and s.prior_frontal is not None
        assert s.frontal.astype(float).mean() > s.prior_frontal.astype(float).mean() + 0.5, label


def test_write_demo_folder_reference_layouts(tmp_path, demo):
    written = write_demo_folder(demo, tmp_path / "demo")
    assert set(written) == {"train", "validation", "test", "chexpert_5x200"}
    with written["train"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(demo["train"])
    assert list(rows[0])[:5] == [
        "image_path",
        "auxview_image_path",
        "last_image_path",
        "last_auxview_image_path",
        "report",
    ]
    for row, ref in zip(rows, _rows(demo["train"])):
        assert (row["auxview_image_path"] == "-1") == (ref["lateral"] is None)
        assert (row["last_image_path"] == "-1") == (ref["prior_frontal"] is None)
        assert row["report"] == ref["report"] and row["label"] == ref["label"]
    paths = [p for row in rows for p in (row["image_path"], row["auxview_image_path"]) if p != "-1"]
    assert all((tmp_path / "demo" / p).is_file() for p in paths)
    with written["chexpert_5x200"].open() as fh:
        five = list(csv.DictReader(fh))
    labels = [
        next(c for c in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion") if r[c] == "1.0")
        for r in five
    ]
    assert labels == sorted(
        labels, key=["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"].index
    )
    assert len(five) == sum(1 for r in _rows(demo["test"]) if r["label"] != "No Finding")
    assert "Report Impression" in five[0]


def test_generate_errors_and_prompts():
    with pytest.raises(ValueError, match="Pneumothorax"):
        generate_study("Pneumothorax", np.random.default_rng(0))
    with pytest.raises(ValueError, match="split_fractions"):
        generate_demo_dataset(10, split_fractions=(0.5, 0.2, 0.2))
    assert list(demo_class_prompts()) == list(DEMO_CLASSES)
    assert set(IMAGE_COLUMNS) == {"frontal", "lateral", "prior_frontal", "prior_lateral"}
