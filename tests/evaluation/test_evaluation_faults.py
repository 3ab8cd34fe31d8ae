"""`alta-evaluate` on bad input: unreadable images are skipped and reported by CSV row and file with partial
results written, required columns are required, paths stay inside --data-root, CSV errors name the file, duplicates
are refused naming both rows, RSNA folds are checked before embedding, progress bars run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluation.results
from evaluation.cli import main
from processing.demo_data import CHEXPERT_COLUMNS
from processing.prompts import CHEXPERT_5X200_CLASSES

from ..model_folders import converted_tiny_model


@pytest.fixture(scope="module")
def model_dir(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))


HEADER = ["", "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS, "Report Impression"]


def _row(i: int, path: str, report: str | None = None) -> list:
    label = CHEXPERT_5X200_CLASSES[i % 5]
    onehot = ["1.0" if c == label else "0.0" for c in CHEXPERT_COLUMNS]
    return [
        i,
        path,
        "Female",
        60,
        "Frontal",
        "AP",
        *onehot,
        report if report is not None else f"{label} in study {i}.",
    ]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("chexpert")
    names = []
    for i in range(10):
        name = f"patient{i:05d}/view1_frontal.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, size=(36, 40), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(root / name, format="JPEG")
        names.append(name)
    return root, names


def _csv(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def _run(model_dir: Path, task: str, csv_path: Path, root: Path, out: Path, *extra: str) -> dict:
    main([task, "--model", str(model_dir), "--csv", str(csv_path), "--data-root", str(root), "--output-dir", str(out),
          *extra])  # fmt: skip
    return json.loads((out / f"{task}_results.json").read_text())


def test_an_unreadable_image_is_skipped_and_reported_by_row_and_file(model_dir, images, tmp_path, capsys):
    root, names = images
    broken = root / "broken.jpg"
    broken.write_bytes((root / names[0]).read_bytes()[:60])  # truncated JPEG, listed on data row 8
    rows = [_row(i, name) for i, name in enumerate(names)]
    rows[7][1] = "broken.jpg"
    result = _run(model_dir, "chexpert5x200-zeroshot", _csv(tmp_path / "set.csv", rows), root, tmp_path / "out")
    assert result["num_samples"] == 9 and result["num_skipped"] == 1
    (skipped,) = result["skipped_images"]
    assert skipped["where"] == f"{tmp_path / 'set.csv'} data row 8"
    assert skipped["file"] == str(broken) and "corrupt or truncated image file" in skipped["error"]
    assert "CheXpert 5x200 images" in capsys.readouterr().err  # the progress bar


def test_results_survive_a_failing_figure(model_dir, images, tmp_path, monkeypatch):
    root, names = images

    def broken_plot(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr("evaluation.plots.plot_confusion_matrix", broken_plot)
    rows = [_row(i, name) for i, name in enumerate(names)]
    result = _run(model_dir, "chexpert5x200-zeroshot", _csv(tmp_path / "set.csv", rows), root, tmp_path / "out")
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["figure_errors"] == {"confusion_matrix": "RuntimeError: matplotlib exploded"}
    assert "heatmap" in result["figures"]


def test_results_are_on_disk_before_the_figures(model_dir, images, tmp_path, monkeypatch):
    root, names = images
    out = tmp_path / "out"
    seen = {}

    def killed_while_drawing(*args, **kwargs):
        seen.update(json.loads((out / "chexpert5x200-zeroshot_results.json").read_text()))
        raise KeyboardInterrupt  # the process dies while drawing: not caught as a figure error

    monkeypatch.setattr("evaluation.plots.plot_confusion_matrix", killed_while_drawing)
    rows = [_row(i, name) for i, name in enumerate(names)]
    with pytest.raises(KeyboardInterrupt):
        _run(model_dir, "chexpert5x200-zeroshot", _csv(tmp_path / "set.csv", rows), root, out)
    assert "accuracy" in seen and seen["num_samples"] == 10


def test_a_required_column_is_required(model_dir, images, tmp_path):
    root, names = images
    rows = [_row(i, name)[:-1] for i, name in enumerate(names)]
    no_reports = _csv(tmp_path / "no_reports.csv", rows, HEADER[:-1])
    with pytest.raises(ValueError, match=r"no_reports.csv: missing column\(s\) \['Report Impression'\]"):
        _run(model_dir, "chexpert5x200-i2t", no_reports, root, tmp_path / "i2t")
    assert 0.0 <= _run(model_dir, "chexpert5x200-zeroshot", no_reports, root, tmp_path / "zs")["accuracy"] <= 1.0
    rows = [_row(i, name) for i, name in enumerate(names)]
    rows[2][-1] = rows[5][-1] = "  "
    with pytest.raises(ValueError, match=r"column 'Report Impression' is empty in data row\(s\) \[3, 6\]"):
        _run(model_dir, "chexpert5x200-i2t", _csv(tmp_path / "blank.csv", rows), root, tmp_path / "i2t")


def test_image_paths_stay_inside_the_data_root(model_dir, images, tmp_path):
    root, names = images
    rows = [_row(i, name) for i, name in enumerate(names)]
    rows[3][1] = "../../../../etc/passwd"
    with pytest.raises(ValueError, match=r"escape.csv data row 4: image path '\.\./\.\./\.\./\.\./etc/passwd' leaves"):
        _run(model_dir, "chexpert5x200-zeroshot", _csv(tmp_path / "escape.csv", rows), root, tmp_path / "a")
    rows[3][1] = str(root / names[3])
    absolute = _csv(tmp_path / "absolute.csv", rows)
    with pytest.raises(ValueError, match=r"data row 4: image path .* is absolute; .*--allow-absolute-paths"):
        _run(model_dir, "chexpert5x200-zeroshot", absolute, root, tmp_path / "b")
    result = _run(model_dir, "chexpert5x200-zeroshot", absolute, root, tmp_path / "c", "--allow-absolute-paths")
    assert result["num_samples"] == 10 and result["num_skipped"] == 0


def test_csv_errors_name_the_file_and_duplicates_both_rows(model_dir, images, tmp_path):
    root, names = images
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(",".join(HEADER).encode() + "\n0,é".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{latin}: not UTF-8 text \(byte \d+, line 2"):
        _run(model_dir, "chexpert5x200-zeroshot", latin, root, tmp_path / "a")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"{empty}: empty CSV file"):
        _run(model_dir, "chexpert5x200-zeroshot", empty, root, tmp_path / "b")
    rows = [_row(i, name) for i, name in enumerate(names)]
    rows[6][1] = rows[1][1]
    with pytest.raises(
        ValueError, match=r"duplicate image path .*: .*twice.csv data row 2 and .*twice.csv data row 7"
    ):
        _run(model_dir, "chexpert5x200-zeroshot", _csv(tmp_path / "twice.csv", rows), root, tmp_path / "c")


# ---------------------------------------------------------------------------------------------------------------
# RSNA
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pydicom")
    from tests.processing.dicom_factory import write_dicom

    root = tmp_path_factory.mktemp("rsna")
    lines = []
    for i in range(10):
        pixels = np.random.default_rng(i).integers(0, 4096, size=(40, 36), dtype=np.uint16)
        write_dicom(root / f"{i}.dcm", pixels, bits_stored=12)
        lines.append(f"{i}.dcm {i % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root


def test_rsna_checks_the_folds_before_embedding(model_dir, rsna, tmp_path, monkeypatch):
    def must_not_embed(*args, **kwargs):
        raise AssertionError("embedded images before checking the folds")

    monkeypatch.setattr(evaluation.results, "embed_images", must_not_embed)
    argv = ["rsna-zeroshot", "--model", str(model_dir), "--list", str(rsna / "list.txt"), "--data-root", str(rsna)]
    with pytest.raises(ValueError, match=r"--n-splits 10 needs at least 10 studies of each class; there are 5 "
                       r"positives and 5 negatives. Pass --n-splits 5 or fewer"):  # fmt: skip
        main([*argv, "--output-dir", str(tmp_path / "a")])


@pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")  # pydicom on the broken file
def test_rsna_keeps_the_auroc_when_skips_break_the_folds(model_dir, rsna, tmp_path):
    good = (rsna / "list.txt").read_text().splitlines()[:9]  # 4 positives, 5 negatives
    (rsna / "list-with-broken.txt").write_text("\n".join([*good, "broken.dcm 1"]) + "\n")  # 5 and 5 as listed
    (rsna / "broken.dcm").write_bytes(b"DICM" * 10)
    argv = ["rsna-zeroshot", "--model", str(model_dir), "--list", str(rsna / "list-with-broken.txt"),
            "--data-root", str(rsna), "--n-splits", "5", "--output-dir", str(tmp_path / "b")]  # fmt: skip
    main(argv)
    result = json.loads((tmp_path / "b" / "rsna-zeroshot_results.json").read_text())
    assert result["num_skipped"] == 1 and result["skipped_images"][0]["where"].endswith("list-with-broken.txt line 10")
    assert 0.0 <= result["auroc"] <= 1.0 and result["accuracy"] is None and result["f1"] is None
    assert "--n-splits 5 needs at least 5 studies of each class; there are 4 positives" in result["fold_error"]


def test_rsna_list_must_be_utf8(model_dir, rsna, tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_bytes("0.dcm 0\n1.dcm 1 é\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{bad}: not UTF-8 text \(byte \d+, line 2"):
        main(["rsna-zeroshot", "--model", str(model_dir), "--list", str(bad), "--data-root", str(rsna)])


def test_a_mistyped_model_folder_says_it_does_not_exist(images, tmp_path):
    root, names = images
    csv_path = _csv(tmp_path / "set.csv", [_row(i, name) for i, name in enumerate(names)])
    with pytest.raises(FileNotFoundError, match=r"model folder 'runs/typo/model' does not exist"):
        main(
            ["chexpert5x200-zeroshot", "--model", "runs/typo/model", "--csv", str(csv_path), "--data-root", str(root)]
        )
    with pytest.raises(
        FileNotFoundError, match=r"model 'someone/typo': there is no local folder .* not found on the Hub"
    ):
        main(["chexpert5x200-zeroshot", "--model", "someone/typo", "--csv", str(csv_path), "--data-root", str(root)])
