"""DICOM archive → studies on a generated archive: views from ViewPosition and each fallback, one image per slot,
priors by date and time, and every unusable file or study listed with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from processing.dicom_archive import assign_view, read_header, scan_dicom_archive

from .dicom_factory import write_test_archive


pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def archive_and_expected(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("archive")
    expected = write_test_archive(root)
    return scan_dicom_archive(root), expected


def test_studies_views_and_priors(archive_and_expected):
    archive, expected = archive_and_expected
    found = {
        s.study_instance_uid: {
            "frontal": Path(s.frontal.path).name,
            "lateral": Path(s.lateral.path).name if s.lateral else None,
            "prior": s.prior.study_instance_uid if s.prior else None,
        }
        for s in archive.studies
    }
    assert found == expected["studies"]
    by_uid = {s.study_instance_uid: s for s in archive.studies}
    # The prior's chosen views fill the prior slots; the slots are the model's vocabulary.
    study = by_uid["1.2"].as_study()
    assert list(study) == ["frontal", "lateral", "prior_frontal", "prior_lateral"]
    assert [Path(v).name for v in study.values()] == ["p1s2-ap", "p1s2-ll", "p1s1-pa", "p1s1-lat"]
    assert by_uid["1.3"].row()["prior_study_id"] == "1.2"  # same date, later time: 1.2 (no time = 00:00) is earlier
    assert all(Path(v).is_absolute() for s in archive.studies for v in s.as_study().values() if v)
    assert archive.notes["view_from_ViewCodeSequence"] == 1 and archive.notes["view_from_PatientOrientation"] == 1
    assert archive.notes["view_from_description"] == 1 and archive.notes["extra_frontal"] == 1
    assert archive.notes["no_study_date"] == 1 and "extra_lateral" not in archive.notes


def test_unusable_files_and_studies_are_listed_with_reasons(archive_and_expected):
    archive, expected = archive_and_expected
    reasons = {Path(u.what).name if not u.what.startswith("study ") else u.what: u.reason for u in archive.unusable}
    assert set(reasons) == set(expected["unusable"])
    for what, fragment in expected["unusable"].items():
        assert fragment in reasons[what], (what, reasons[what])
    assert [Path(u.what).name for u in archive.unassigned] == expected["unassigned"]
    assert "'LAO'" in archive.unassigned[0].reason
    # Headers only: the frontal whose pixel data is cut off is grouped (decoding it later is what fails).
    assert "4.1" in {s.study_instance_uid for s in archive.studies}
    assert len(archive.images) == 14 and "7 studies from 14 images" in archive.summary()


def test_view_rules_one_header_at_a_time(archive_and_expected):
    _, expected = archive_and_expected
    files = expected["files"]
    header = read_header(files["p1s2-ap-small"])
    assert (header.view, header.position, header.view_source) == ("frontal", "AP", "ViewPosition")
    assert read_header(files["p2s1-orient"]).view_source == "PatientOrientation"
    import pydicom

    dataset = pydicom.Dataset()
    dataset.SeriesDescription = "PA and LAT"  # words of both kinds: no decision
    assert assign_view(dataset) == (None, None, None)
    dataset.ViewPosition = "LL "
    assert assign_view(dataset) == ("lateral", "LL", "ViewPosition")
    dataset.ViewPosition = "AP AXIAL"  # a view ALTA does not use: no fallback either
    assert assign_view(dataset) == (None, None, None)


def test_symlinks_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    write_test_archive(outside)
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    archive = scan_dicom_archive(root)
    assert archive.studies == [] and [u.reason for u in archive.unusable] == [
        "symbolic link to a folder (not followed)"
    ]
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_dicom_archive(tmp_path / "missing")
