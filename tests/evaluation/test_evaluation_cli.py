"""`alta-evaluate` end to end on small data written in the reference formats, against `evaluation.protocols`.

Each protocol runs through the command line on tiny generated images and a tiny converted model, with
`--save-embeddings`; the numbers in its JSON must equal those that `evaluation.protocols` computes from the same
embeddings (the protocol math itself has exact hand-computed tests in test_protocols.py).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from evaluation import protocols
from evaluation.chexpert_8x200 import CHEXPERT_8X200_LABELS
from evaluation.cli import main
from evaluation.demo import evaluate_demo
from inference.embedding import embed_images, embed_texts, load_model_and_processor
from inference.zero_shot import ZeroShotClassifier, zero_shot_logits
from processing.demo_data import CHEXPERT_COLUMNS
from processing.prompts import CHEXPERT_5X200_CLASSES

from ..conftest import REPO_ROOT
from ..model_folders import converted_tiny_model


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))


@pytest.fixture(scope="module")
def model_and_processor(model_dir: Path):
    return load_model_and_processor(model_dir)


def _write_png(path: Path, seed: int, size: tuple[int, int] = (40, 36)) -> str:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=size[::-1], dtype=np.uint8), "L").save(path)
    return path.name


def _results(out: Path, task: str) -> dict:
    result = json.loads((out / f"{task}_results.json").read_text())
    for png in result["figures"].values():
        assert Path(png).read_bytes()[:8] == PNG_SIGNATURE
    return result


# ---------------------------------------------------------------------------------------------------------------
# CheXpert 5x200
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chexpert_5x200(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int]]:
    """10 rows in the layout of the reference's chexpert_5x200.csv (2 per class, in class blocks)."""
    root = tmp_path_factory.mktemp("chexpert")
    labels = [c for c in range(5) for _ in range(2)]
    findings = ["bibasilar atelectasis", "mild cardiomegaly", "patchy consolidation", "pulmonary edema", "effusion"]
    header = ["", "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS, "Report Impression"]
    with (root / "chexpert_5x200.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, label in enumerate(labels):
            rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
            image = root / rel
            image.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 256, size=(36, 40), dtype=np.uint8), "L").save(image, format="JPEG")
            onehot = ["1.0" if c == CHEXPERT_5X200_CLASSES[label] else "0.0" for c in CHEXPERT_COLUMNS]
            report = f"\n1. {findings[label]} is seen in study {i}.\n2. No pneumothorax."
            writer.writerow([i, rel, "Female", 60, "Frontal", "AP", *onehot, report])
    return root / "chexpert_5x200.csv", root, labels


def test_chexpert_5x200_zero_shot_cli(model_dir, model_and_processor, chexpert_5x200, tmp_path):
    csv_path, root, labels = chexpert_5x200
    out = tmp_path / "zs"
    # the module entry point, in a fresh interpreter (what `alta-evaluate` runs)
    argv = ["chexpert5x200-zeroshot", "--model", str(model_dir), "--csv", str(csv_path), "--data-root", str(root)]
    argv += ["--output-dir", str(out), "--save-embeddings"]
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.cli", *argv], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _results(out, "chexpert5x200-zeroshot")
    assert set(result["figures"]) == {"confusion_matrix", "heatmap"}
    emb = load_file(result["embeddings_file"])
    expected = protocols.zero_shot_accuracy(
        zero_shot_logits(emb["image_embeds"], emb["class_embeds"]), labels, list(CHEXPERT_5X200_CLASSES)
    )
    assert result["accuracy"] == expected["accuracy"]
    assert result["per_class_accuracy"] == expected["per_class_accuracy"]
    assert result["num_samples"] == 10
    # the saved embeddings are the model's: the reference grid and the single-frontal path
    model, processor = model_and_processor
    clf = ZeroShotClassifier(model, processor, "chexpert5x200")
    torch.testing.assert_close(emb["class_embeds"], clf.class_embeddings, atol=1e-6, rtol=1e-5)
    first = embed_images(model, processor, [root / "CheXpert-v1.0-small/train/patient00000/study1/view1_frontal.jpg"])
    torch.testing.assert_close(emb["image_embeds"][:1], first, atol=1e-6, rtol=1e-5)


def test_chexpert_5x200_image_to_text_cli(model_dir, model_and_processor, chexpert_5x200, tmp_path):
    csv_path, root, labels = chexpert_5x200
    out = tmp_path / "i2t"
    main(["chexpert5x200-i2t", "--model", str(model_dir), "--csv", str(csv_path), "--data-root", str(root),
          "--output-dir", str(out), "--save-embeddings", "--batch-size", "4"])  # fmt: skip
    result = _results(out, "chexpert5x200-i2t")
    emb = load_file(result["embeddings_file"])
    expected = protocols.image_to_text_precision(emb["image_embeds"], emb["text_embeds"], labels, ks=(5, 10))
    assert {k: result[k] for k in ("p@5", "p@10")} == expected and "p@100" not in result  # 10 reports only
    assert "retrieval" in result["figures"]
    model, processor = model_and_processor
    with csv_path.open(newline="") as fh:
        reports = [row["Report Impression"] for row in csv.DictReader(fh)]
    direct = embed_texts(model, processor, reports[:2], max_length=256, clean_text=True, truncation=False)
    torch.testing.assert_close(emb["text_embeds"][:2], direct, atol=1e-6, rtol=1e-5)


def test_chexpert_5x200_format_errors_name_the_row(model_dir, chexpert_5x200, tmp_path):
    csv_path, root, _ = chexpert_5x200
    rows = list(csv.reader(csv_path.open(newline="")))
    header = rows[0]
    bad = [list(r) for r in rows]
    bad[3][header.index("Edema")] = "1.0"  # row 3 is Atelectasis already: two positives
    bad_csv = tmp_path / "two_positives.csv"
    csv.writer(bad_csv.open("w", newline="")).writerows(bad)
    with pytest.raises(ValueError, match=r"two_positives.csv data row 3: needs exactly one positive"):
        main(["chexpert5x200-zeroshot", "--model", str(model_dir), "--csv", str(bad_csv), "--data-root", str(root)])
    # a wrong --data-root: nothing readable, said at once with the root and the first rows and files
    with pytest.raises(
        ValueError,
        match=r"no readable image among the 10 CheXpert 5x200 images \(--data-root /nonexistent\): .*data row 1: "
        r"/nonexistent/CheXpert-v1.0-small/train/patient00000/study1/view1_frontal.jpg: FileNotFoundError",
    ):
        main(
            [
                "chexpert5x200-zeroshot",
                "--model",
                str(model_dir),
                "--csv",
                str(csv_path),
                "--data-root",
                "/nonexistent",
            ]
        )


# ---------------------------------------------------------------------------------------------------------------
# RSNA pneumonia
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """20 tiny DICOMs (10 positive) under stage_2_test_images/, as the reference's RSNA_dataset folder."""
    pytest.importorskip("pydicom")
    from tests.processing.dicom_factory import write_dicom

    root = tmp_path_factory.mktemp("RSNA_dataset")
    (root / "stage_2_test_images").mkdir()
    labels = [i % 2 for i in range(20)]
    lines, ids = [], []
    for i, label in enumerate(labels):
        rng = np.random.default_rng(100 + i)
        pixels = rng.integers(0, 4096, size=(40, 36), dtype=np.uint16)
        name = f"{i:08x}-0000-4000-8000-{i:012x}"
        write_dicom(root / "stage_2_test_images" / f"{name}.dcm", pixels, bits_stored=12,
                    photometric="MONOCHROME1" if i % 5 == 0 else "MONOCHROME2")  # fmt: skip
        lines.append(f"stage_2_test_images/{name}.dcm {label} ")
        ids.append(name)
    (root / "test_list.txt").write_text("\n".join(lines) + "\n")
    # the unlabeled form: ids only + the challenge's labels csv (a positive patient has one row per box)
    (root / "ids.txt").write_text("\n".join(f"stage_2_test_images/{n}" for n in ids) + "\n")
    with (root / "stage_2_train_labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for name, label in zip(ids, labels):
            for _ in range(1 + label):
                writer.writerow([name, *(["1", "2", "3", "4"] if label else ["", "", "", ""]), label])
    return root, labels


def test_rsna_zero_shot_cli(model_dir, model_and_processor, rsna, tmp_path):
    root, labels = rsna
    common = ["--model", str(model_dir), "--data-root", str(root), "--save-embeddings", "--no-plots"]
    main(["rsna-zeroshot", "--list", str(root / "test_list.txt"), "--output-dir", str(tmp_path / "f1"), *common])
    by_f1 = _results(tmp_path / "f1", "rsna-zeroshot")
    emb = load_file(by_f1["embeddings_file"])
    scores = protocols.rsna_zero_shot_scores(emb["image_embeds"], emb["positive_embed"], emb["negative_embed"])
    expected = protocols.rsna_zero_shot_metrics(labels, scores, select_by="f1")
    for key in ("auroc", "accuracy", "f1", "fold_thresholds", "select_by"):
        np.testing.assert_equal(by_f1[key], expected[key], err_msg=key)  # NaN (an undefined F1) equals NaN
    assert by_f1["num_samples"] == 20 and by_f1["num_positive"] == 10 and by_f1["figures"] == {}

    main(["rsna-zeroshot", "--list", str(root / "ids.txt"), "--labels-csv", str(root / "stage_2_train_labels.csv"),
          "--select-threshold-by", "accuracy", "--n-splits", "5", "--output-dir", str(tmp_path / "acc"), *common])  # fmt: skip
    by_acc = _results(tmp_path / "acc", "rsna-zeroshot")
    assert by_acc["select_by"] == "accuracy" and len(by_acc["fold_thresholds"]) == 5
    expected = protocols.rsna_zero_shot_metrics(labels, scores, select_by="accuracy", n_splits=5)
    for key in ("auroc", "accuracy", "f1", "fold_thresholds"):
        np.testing.assert_equal(by_acc[key], expected[key], err_msg=key)
    # the DICOMs go through the reference's RSNA rule, the prompts are 10 raw tokens
    model, processor = model_and_processor
    first = embed_images(model, processor, [next(iter(sorted((root / "stage_2_test_images").glob("*.dcm"))))],
                         dicom_rule="rsna")  # fmt: skip
    torch.testing.assert_close(emb["image_embeds"][:1], first, atol=1e-6, rtol=1e-5)
    prompts = embed_texts(model, processor, ["There is pneumonia"], normalize=False, max_length=10)
    torch.testing.assert_close(emb["positive_embed"], prompts[0], atol=1e-6, rtol=1e-5)


def test_rsna_list_errors(model_dir, rsna, tmp_path):
    root, _ = rsna
    with pytest.raises(ValueError, match=r"ids.txt line 1: no label on the line and no --labels-csv"):
        main(["rsna-zeroshot", "--model", str(model_dir), "--list", str(root / "ids.txt"), "--data-root", str(root)])
    bad = tmp_path / "bad.txt"
    bad.write_text("stage_2_test_images/x.dcm 2\n")
    with pytest.raises(ValueError, match=r"bad.txt line 1: label '2' must be 0 or 1"):
        main(["rsna-zeroshot", "--model", str(model_dir), "--list", str(bad), "--data-root", str(root)])


# ---------------------------------------------------------------------------------------------------------------
# CheXpert 8x200
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chexpert_8x200(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ConVIRT's layout: candidate.csv (Path, 4 more columns, the 14 CheXpert labels) and the two query.csv."""
    root = tmp_path_factory.mktemp("chexpert8x200")
    names = list(CHEXPERT_8X200_LABELS)
    candidates, labels = [], []
    for i in range(56):  # 7 per class, enough for P@50
        name = names[i % 8]
        rel = f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.png"
        _write_png(root / rel, 1000 + i)
        candidates.append([rel, "Male", 50, "Frontal", "PA", *("1.0" if c == name else "" for c in CHEXPERT_COLUMNS)])
        labels.append(CHEXPERT_8X200_LABELS[name])
    with (root / "candidate.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS], *candidates])
    texts = {name: f"findings consistent with {name.lower()}" for name in names}
    with (root / "text_query.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Variable", "Text"])
        writer.writerows([[name, texts[name]] for name in names])
    with (root / "image_query.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Path", "Variable"])
        for j, name in enumerate(names):
            rel = f"queries/q{j}.png"
            _write_png(root / rel, 2000 + j)
            writer.writerow([rel, name])
    query_labels = [CHEXPERT_8X200_LABELS[n] for n in names]
    return {"root": root, "labels": labels, "query_labels": query_labels, "texts": [texts[n] for n in names]}


@pytest.mark.parametrize("task", ["chexpert8x200-t2i", "chexpert8x200-i2i"])
def test_chexpert_8x200_cli(model_dir, model_and_processor, chexpert_8x200, tmp_path, task):
    root = chexpert_8x200["root"]
    query = root / ("text_query.csv" if task.endswith("t2i") else "image_query.csv")
    main([task, "--model", str(model_dir), "--query-csv", str(query), "--candidate-csv", str(root / "candidate.csv"),
          "--data-root", str(root), "--output-dir", str(tmp_path), "--save-embeddings"])  # fmt: skip
    result = _results(tmp_path, task)
    emb = load_file(result["embeddings_file"])
    fn = protocols.text_to_image_precision if task.endswith("t2i") else protocols.image_to_image_precision
    expected = fn(
        emb["query_embeds"], emb["candidate_embeds"], chexpert_8x200["query_labels"], chexpert_8x200["labels"]
    )
    assert {k: result[k] for k in ("p@5", "p@10", "p@50")} == expected
    assert result["num_queries"] == 8 and result["num_candidates"] == 56 and "retrieval" in result["figures"]
    if task.endswith("t2i"):  # queries: 20 tokens, raw, not truncated
        model, processor = model_and_processor
        direct = embed_texts(model, processor, chexpert_8x200["texts"][:2], max_length=20, truncation=False)
        torch.testing.assert_close(emb["query_embeds"][:2], direct, atol=1e-6, rtol=1e-5)


def test_chexpert_8x200_errors(model_dir, chexpert_8x200, tmp_path):
    root = chexpert_8x200["root"]
    bad = tmp_path / "query.csv"
    bad.write_text("Variable,Text\nPneumonitis,some text\n")
    with pytest.raises(ValueError, match=r"query.csv data row 1: Variable 'Pneumonitis' is not one of"):
        main(["chexpert8x200-t2i", "--model", str(model_dir), "--query-csv", str(bad),
              "--candidate-csv", str(root / "candidate.csv"), "--data-root", str(root)])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_splits():
    from processing.demo_data import generate_demo_dataset

    return generate_demo_dataset(40, seed=3, image_size=64, split_fractions=(0.3, 0.1, 0.6))


@pytest.mark.parametrize("frontal_only", [False, True])
def test_evaluate_demo(model_and_processor, demo_splits, tmp_path, frontal_only):
    model, processor = model_and_processor
    split = demo_splits["test"]
    result = evaluate_demo(
        model, split, tmp_path, frontal_only=frontal_only, processor=processor, plots=not frontal_only
    )
    assert set(result["figures"]) == (set() if frontal_only else {"confusion_matrix", "retrieval", "heatmap"})
    assert (
        json.loads((tmp_path / "demo_results.json").read_text())["zero_shot_accuracy"] == result["zero_shot_accuracy"]
    )
    # the same numbers from embeddings computed directly
    if frontal_only:
        inputs = list(split["frontal"])
    else:
        views = ("frontal", "lateral", "prior_frontal", "prior_lateral")
        inputs = [{v: row[v] for v in views} for row in split]
    images = embed_images(model, processor, inputs)
    texts = embed_texts(model, processor, list(split["report"]))
    clf = ZeroShotClassifier(model, processor, "demo", clean_text=False)
    labels = [clf.class_names.index(y) for y in split["label"]]
    accuracy = protocols.zero_shot_accuracy(clf.scores_from_embeddings(images).logits, labels, clf.class_names)
    assert result["zero_shot_accuracy"] == accuracy["accuracy"]
    assert result["per_class_accuracy"] == accuracy["per_class_accuracy"]
    assert result["i2t_p@5"] == protocols.image_to_text_precision(images, texts, labels, ks=(5,))["p@5"]
    assert result["t2i_p@5"] == protocols.text_to_image_precision(texts, images, labels, labels, ks=(5,))["p@5"]
    assert result["chance_accuracy"] == 1 / 6 and result["num_studies"] == len(split)


def test_demo_cli_reads_a_saved_dataset(model_dir, demo_splits, tmp_path):
    demo_splits.save_to_disk(str(tmp_path / "demo"))
    main(["demo", "--model", str(model_dir), "--dataset", str(tmp_path / "demo"), "--output-dir", str(tmp_path / "out"),
          "--no-plots"])  # fmt: skip
    result = _results(tmp_path / "out", "demo")
    assert {"zero_shot_accuracy", "i2t_p@5", "t2i_p@5", "per_class_accuracy"} <= set(result)
    assert result["num_studies"] == len(demo_splits["test"]) and result["frontal_only"] is False
