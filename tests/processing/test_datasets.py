"""Study datasets: the reference CSV, a generated MIMIC-CXR-JPG tree, Hub/disk datasets, lazy decoding."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image as PILImage

from processing.datasets import (
    dataset_from_mimic,
    dataset_from_reference_csv,
    dataset_from_rows,
    load_study_dataset,
    main,
    save_study_dataset,
    set_study_transform,
    study_features,
)
from processing.studies import (
    VIEW_COLUMNS,
    ReportSections,
    build_mimic_studies,
    compose_report,
    extract_sections,
    is_missing_view,
    mimic_image_path,
    mimic_report_path,
    read_reference_csv,
    write_reference_csv,
)


def _jpeg(path: Path, value: int = 128, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("L", size, value).save(path, format="JPEG")
    return path


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 COMPARISON:  ___.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process

 NOTIFICATION:  Dr. ___ was informed.
"""

# dicom_id, subject, study, view, date, time, rows, columns
_IMAGES = [
    # subject 10000001: three studies; s50000001 has two frontals (AP big, PA small) and a lateral,
    # s50000002 has two PA (tie-break by size, then dicom_id) and no lateral, s50000003 same date later time.
    ("d01", 10000001, 50000001, "AP", 21500101, 120000.0, 3000, 2500),
    ("d02", 10000001, 50000001, "PA", 21500101, 120000.0, 2000, 2000),
    ("d03", 10000001, 50000001, "LATERAL", 21500101, 120000.0, 2000, 2000),
    ("d05", 10000001, 50000002, "PA", 21500301, 80000.0, 2000, 2000),
    ("d04", 10000001, 50000002, "PA", 21500301, 80000.0, 2000, 2000),
    ("d06", 10000001, 50000002, "PA", 21500301, 80000.0, 1000, 1000),
    ("d07", 10000001, 50000003, "AP", 21500301, 93000.5, 2000, 2000),
    ("d08", 10000001, 50000003, "LL", 21500301, 93000.5, 2000, 2000),
    # subject 10000002: one study (no prior), lateral only + an AP AXIAL -> no frontal, skipped
    ("d09", 10000002, 50000004, "LATERAL", 21600101, 100000.0, 2000, 2000),
    ("d10", 10000002, 50000004, "AP AXIAL", 21600101, 100000.0, 2000, 2000),
    # subject 10000002, later study with an unparseable report
    ("d11", 10000002, 50000005, "PA", 21600201, 100000.0, 2000, 2000),
    # subject 11000003: one study whose frontal JPEG is corrupt; one in the test split
    ("d12", 11000003, 50000006, "PA", 21700101, 100000.0, 2000, 2000),
    ("d13", 11000004, 50000007, "PA", 21700101, 100000.0, 2000, 2000),
    # subject 11000005: report file missing
    ("d14", 11000005, 50000008, "PA", 21700101, 100000.0, 2000, 2000),
]
_SPLITS = {11000004: "test"}


@pytest.fixture
def mimic_root(tmp_path: Path) -> Path:
    """A small MIMIC-CXR-JPG-like tree: metadata/split CSVs, JPEGs, report files."""
    root = tmp_path / "mimic-cxr-jpg"
    root.mkdir()
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"]
        )
        for dicom, subject, study, view, date, time, rows, cols in _IMAGES:
            writer.writerow([dicom, subject, study, view, rows, cols, date, time])
    with open(root / "mimic-cxr-2.0.0-split.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", "study_id", "subject_id", "split"])
        for dicom, subject, study, *_ in _IMAGES:
            writer.writerow([dicom, study, subject, _SPLITS.get(subject, "train")])
    for dicom, subject, study, *_ in _IMAGES:
        path = mimic_image_path(root, subject, study, dicom)
        if dicom == "d12":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8 this is not a JPEG")
        else:
            _jpeg(path, value=int(dicom[1:]) * 10)
    for subject, study in {(s, t) for _, s, t, *_ in _IMAGES}:
        if study == 50000008:
            continue
        text = REPORT if study != 50000005 else "WET READ: ___ 3:30 PM\n  no pneumonia\n"
        mimic_report_path(root, subject, study).write_text(text)
    return root


def test_extract_sections_real_formatting():
    sections = extract_sections(REPORT)
    assert sections.findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal silhouette is normal."
    )
    assert sections.impression == "No acute cardiopulmonary process"
    assert compose_report(sections).endswith("is normal. No acute cardiopulmonary process.")
    assert compose_report(sections, ["impression"]) == "No acute cardiopulmonary process."


@pytest.mark.parametrize(
    ("text", "findings", "impression"),
    [
        ("FINDINGS: Lungs clear.\n", "Lungs clear.", None),
        (" IMPRESSION:  Small left\n effusion.\n", None, "Small left effusion."),
        ("FINDINGS AND IMPRESSION: Normal chest.", None, "Normal chest."),
        ("Findings: wrapped\n   line.\nConclusion: ok", "wrapped line.", "ok"),
        ("FINDINGS:\n\nIMPRESSION: only this", None, "only this"),  # an empty section counts as absent
        ("IMPRESSION: a.\nADDENDUM: x\nIMPRESSION: b.", None, "a. b."),
        ("Heart: normal.\nLungs: clear.", None, None),  # lower-case words are not headers
        ("", None, None),
    ],
)
def test_extract_sections_rules(text, findings, impression):
    assert extract_sections(text) == ReportSections(findings, impression)


def test_missing_view_markers():
    for value in ("-1", -1, -1.0, None, float("nan"), "", " -1 "):
        assert is_missing_view(value), value
    assert not is_missing_view("files/a.jpg")


def test_mimic_builder_rules(mimic_root: Path):
    table = build_mimic_studies(mimic_root, split="train")
    rows = {row["study_id"]: row for row in table.rows}
    img = lambda subject, study, dicom: str(mimic_image_path(mimic_root.resolve(), subject, study, dicom))  # noqa: E731

    # several frontals: PA beats a bigger AP; lateral kept; first study of the subject has no prior
    first = rows["50000001"]
    assert first["frontal"] == img(10000001, 50000001, "d02")
    assert first["lateral"] == img(10000001, 50000001, "d03")
    assert first["prior_frontal"] is None and first["prior_lateral"] is None and first["prior_study_id"] is None
    # several PA: the bigger wins, equal size -> smaller dicom_id; no lateral; prior = study 1
    second = rows["50000002"]
    assert second["frontal"] == img(10000001, 50000002, "d04")
    assert second["lateral"] is None
    assert (second["prior_frontal"], second["prior_lateral"]) == (first["frontal"], first["lateral"])
    # same day, later time: prior is the morning study; LL counts as a lateral
    third = rows["50000003"]
    assert third["prior_study_id"] == "50000002" and third["prior_lateral"] is None
    assert third["lateral"] == img(10000001, 50000003, "d08")
    assert third["report"].startswith("There is no focal consolidation")
    assert third["subject_id"] == "10000001" and third["split"] == "train"

    # skipped: lateral-only study, unparseable report, missing report; test split excluded
    assert set(rows) == {"50000001", "50000002", "50000003", "50000006"}
    assert table.skipped == {"no_frontal": 1, "unparseable_report": 1, "missing_report": 1}
    assert table.notes["no_lateral"] == 2 and table.notes["no_prior"] == 2
    # the corrupt JPEG is still listed (decoding is lazy); it is flagged at training time
    assert rows["50000006"]["frontal"].endswith("d12.jpg")
    assert "studies kept" in table.summary()

    assert {r["study_id"] for r in build_mimic_studies(mimic_root, split="test").rows} == {"50000007"}
    assert len(build_mimic_studies(mimic_root, split=None).rows) == 5


def test_mimic_prior_skips_study_without_frontal_and_missing_files(mimic_root: Path):
    # Remove study 2's frontals from disk: study 3's prior falls back to study 1; study 2 loses its frontal.
    for dicom in ("d04", "d05", "d06"):
        mimic_image_path(mimic_root, 10000001, 50000002, dicom).unlink()
    table = build_mimic_studies(mimic_root, split="train")
    rows = {row["study_id"]: row for row in table.rows}
    assert "50000002" not in rows
    assert rows["50000003"]["prior_study_id"] == "50000001"
    assert table.notes["image_files_missing"] == 3


def test_mimic_errors(mimic_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split must be one of"):
        build_mimic_studies(mimic_root, split="training")
    with pytest.raises(FileNotFoundError, match="metadata not found"):
        build_mimic_studies(tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,subject_id\nx,1\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['study_id', 'ViewPosition'"):
        build_mimic_studies(mimic_root, metadata_csv=bad)


def test_mimic_dataset_decode_and_roundtrip(mimic_root: Path, tmp_path: Path):
    ds = dataset_from_mimic(mimic_root, split="train")
    assert ds.features == study_features(("prior_study_id", "split"))
    assert len(ds) == 4
    row = ds[1]
    assert isinstance(row["frontal"], PILImage.Image) and row["lateral"] is None

    out = save_study_dataset(ds.select([0, 1, 2]), tmp_path / "saved")
    loaded = load_study_dataset(out)
    assert loaded.features == ds.features
    assert list(loaded["report"]) == list(ds.select([0, 1, 2])["report"])
    assert loaded[0]["frontal"].size == (16, 12) and loaded[1]["prior_frontal"] is not None
    assert loaded[0]["prior_frontal"] is None


def test_paths_only_roundtrip(mimic_root: Path, tmp_path: Path):
    ds = dataset_from_mimic(mimic_root, split="train", paths_only=True)
    out = save_study_dataset(ds, tmp_path / "paths")
    loaded = load_study_dataset(out)
    assert isinstance(loaded[0]["frontal"], PILImage.Image)


def test_corrupt_image_is_flagged_not_raised(mimic_root: Path):
    ds = dataset_from_mimic(mimic_root, split="train")
    calls = []

    def fn(images, report):
        calls.append(sorted(k for k, v in images.items() if v is not None))
        return {"n_views": sum(v is not None for v in images.values()), "text": report.lower()}

    ds = set_study_transform(ds, fn)
    batch = ds[0:4]
    assert batch["valid"] == [True, True, True, False]
    assert batch["error"][:3] == [None, None, None]
    assert batch["error"][3].startswith("frontal: '") and "d12.jpg" in batch["error"][3]
    assert "ValueError" in batch["error"][3] and "not a recognised image file" in batch["error"][3]
    assert batch["n_views"] == [4 - 2, 3, 3, None]  # study 1: frontal+lateral; 2: +prior pair; 3: +prior frontal
    assert batch["study_id"] == ["50000001", "50000002", "50000003", "50000006"]
    assert len(calls) == 3  # fn is never called for the corrupt study
    single = ds[3]
    assert single["valid"] is False and single["study_id"] == "50000006"


def test_transform_without_fn_and_missing_frontal(tmp_path: Path):
    good = _jpeg(tmp_path / "a.jpg")
    rows = [
        {"frontal": str(good), "lateral": None, "prior_frontal": None, "prior_lateral": None, "report": "r0"},
        {"frontal": None, "lateral": str(good), "prior_frontal": None, "prior_lateral": None, "report": "r1"},
        {
            "frontal": str(tmp_path / "gone.jpg"),
            "lateral": None,
            "prior_frontal": None,
            "prior_lateral": None,
            "report": "r2",
        },
    ]
    ds = set_study_transform(dataset_from_rows(rows))
    batch = ds[:]
    assert batch["valid"] == [True, False, False]
    assert isinstance(batch["frontal"][0], PILImage.Image)
    assert batch["frontal"][1:] == [None, None] and batch["lateral"][1] is None
    assert batch["error"][1] == "frontal: missing (required view)"
    assert "gone.jpg" in batch["error"][2] and "FileNotFoundError" in batch["error"][2]
    assert batch["report"] == ["r0", None, None]


def test_rows_reject_relative_paths():
    row = {"frontal": "a.jpg", "lateral": None, "prior_frontal": None, "prior_lateral": None, "report": "r"}
    with pytest.raises(ValueError, match="'a.jpg' is not absolute"):
        dataset_from_rows([row])


def _write_reference_csv(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "auxview_image_path", "last_image_path", "last_auxview_image_path", "report"])
        writer.writerows(rows)
    return path


def test_reference_csv(tmp_path: Path):
    root = tmp_path / "data"
    for name in ("f0", "l0", "pf0", "f1", "f2"):
        _jpeg(root / "img" / f"{name}.jpg")
    csv_path = _write_reference_csv(
        tmp_path / "train.csv",
        [
            ["img/f0.jpg", "img/l0.jpg", "img/pf0.jpg", "-1", "Lungs clear. No effusion."],
            ["img/f1.jpg", -1, "-1", -1, "Cardiomegaly."],
            [str(root / "img" / "f2.jpg"), "-1", "-1", "-1", "Absolute path."],
        ],
    )
    with pytest.raises(ValueError, match=r"line 4, column 'image_path': image path .*f2.jpg' is absolute"):
        dataset_from_reference_csv(csv_path, image_root=root)  # paths stay inside the root unless allowed
    ds = dataset_from_reference_csv(csv_path, image_root=root, allow_absolute_paths=True)
    assert ds.features == study_features()
    assert len(ds) == 3
    assert [ds[i]["lateral"] is None for i in range(3)] == [False, True, True]
    assert ds[0]["prior_frontal"] is not None and ds[0]["prior_lateral"] is None
    assert ds[1]["report"] == "Cardiomegaly."
    # the default root is the CSV's folder: the relative paths then do not exist, which check_files reports
    with pytest.raises(FileNotFoundError, match=r"line 2 \(row 0\), column 'image_path'"):
        read_reference_csv(csv_path, check_files=True, allow_absolute_paths=True)
    # int -1 as parsed by pandas from an all-numeric column
    numeric = tmp_path / "numeric.csv"
    _write_reference_csv(numeric, [["img/f0.jpg", -1, -1, -1, "r"]])
    assert read_reference_csv(numeric, root).rows[0]["lateral"] is None


def test_reference_csv_faults_name_the_file_and_lines(tmp_path: Path):
    escaping = _write_reference_csv(tmp_path / "escape.csv", [["../../../../etc/passwd", "-1", "-1", "-1", "r"]])
    with pytest.raises(ValueError, match=r"escape.csv' line 2, column 'image_path': image path '\.\./\.\./\.\./\.\./etc/"
                       r"passwd' leaves the image root"):  # fmt: skip
        read_reference_csv(escaping, tmp_path / "root")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("image_path,auxview_image_path,last_image_path,last_auxview_image_path,report\n"
                      "a.jpg,-1,-1,-1,Épanchement\n".encode("latin-1"))  # fmt: skip
    with pytest.raises(ValueError, match=r"latin1.csv': not UTF-8 text"):
        read_reference_csv(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv': empty file"):
        read_reference_csv(empty)
    twice = tmp_path / "twice.csv"
    twice.write_text(
        "image_path,auxview_image_path,last_image_path,last_auxview_image_path,report,study_id\n"
        "a.jpg,-1,-1,-1,r,s1\nb.jpg,-1,-1,-1,r,s2\nc.jpg,-1,-1,-1,r,s1\n"
    )
    with pytest.raises(ValueError, match=r"twice.csv': study_id 's1' appears twice, on lines 2 and 4"):
        read_reference_csv(twice)


def test_reference_csv_missing_frontal(tmp_path: Path):
    csv_path = _write_reference_csv(
        tmp_path / "train.csv", [["a.jpg", "-1", "-1", "-1", "ok"], ["-1", "b.jpg", "-1", "-1", "no frontal"]]
    )
    with pytest.raises(ValueError, match=r"line 3 \(row 1\): the current frontal 'image_path' is missing \('-1'\)"):
        read_reference_csv(csv_path)
    table = read_reference_csv(csv_path, missing_frontal="skip")
    assert len(table) == 1 and table.skipped["no_frontal"] == 1
    broken = tmp_path / "broken.csv"
    broken.write_text("image_path,report\na.jpg,r\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_reference_csv(broken)


def test_write_reference_csv_roundtrip(mimic_root: Path, tmp_path: Path):
    table = build_mimic_studies(mimic_root)
    out = write_reference_csv(table, tmp_path / "ref" / "train.csv", relative_to=mimic_root)
    text = out.read_text()
    assert text.splitlines()[0] == (
        "image_path,auxview_image_path,last_image_path,last_auxview_image_path,report,study_id,subject_id"
    )
    assert ",-1," in text and str(mimic_root) not in text
    back = read_reference_csv(out, image_root=mimic_root)
    for before, after in zip(table.rows, back.rows):
        assert all(before[v] == after[v] for v in VIEW_COLUMNS)
        assert before["report"] == after["report"] and before["study_id"] == after["study_id"]


def test_load_study_dataset_validates_columns(tmp_path: Path):
    from datasets import Dataset

    Dataset.from_dict({"frontal": ["x"], "report": ["r"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"lacks the study column\(s\) \['lateral', 'prior_frontal'"):
        load_study_dataset(tmp_path / "bad")
    # path strings and all-None (null-typed) columns are accepted and cast to Image()
    good = _jpeg(tmp_path / "f.jpg")
    Dataset.from_dict(
        {"frontal": [str(good)], "lateral": [None], "prior_frontal": [None], "prior_lateral": [None], "report": ["r"]}
    ).save_to_disk(str(tmp_path / "plain"))
    loaded = load_study_dataset(tmp_path / "plain")
    assert isinstance(loaded[0]["frontal"], PILImage.Image) and loaded[0]["lateral"] is None


def test_cli(mimic_root: Path, tmp_path: Path, capsys):
    table = main(
        ["mimic", "--root", str(mimic_root), "--out", str(tmp_path / "ds"), "--train-csv", str(tmp_path / "t.csv")]
    )
    assert len(table) == 4
    assert len(load_study_dataset(tmp_path / "ds")) == 4
    assert (tmp_path / "t.csv").read_text().count("\n") == 5
    assert "4 studies kept" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["mimic", "--root", str(mimic_root)])


def test_write_reference_csv_outside_relative_root(tmp_path: Path):
    row = {"frontal": str(tmp_path / "a.jpg"), "lateral": None, "prior_frontal": None, "prior_lateral": None}
    with pytest.raises(ValueError, match="is not inside relative_to="):
        write_reference_csv([{**row, "report": "r", "study_id": "s1"}], tmp_path / "t.csv", relative_to=tmp_path / "x")


def test_dicom_views_decode_once_in_the_dataset_transform(tmp_path: Path):
    import numpy as np

    from tests.processing.dicom_factory import write_dicom

    pixels = np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 7
    dicom = write_dicom(tmp_path / "pa.dcm", pixels, bits_stored=12)
    lateral = str(_jpeg(tmp_path / "l.jpg"))
    rows = [
        {"frontal": str(dicom), "lateral": lateral, "prior_frontal": None, "prior_lateral": None, "report": "Clear."}
    ]
    row = set_study_transform(dataset_from_rows(rows))[0]
    assert row["valid"] is True and row["frontal"].mode == "L" and row["frontal"].size == (24, 20)
    from modeling_alta.cxr_io_alta import load_image

    assert np.array_equal(np.asarray(row["frontal"]), np.asarray(load_image(dicom)))
