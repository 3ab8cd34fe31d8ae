"""`alta-evaluate`: the ALTA paper's benchmarks on user-provided data in the reference's formats, and the demo.

Tasks (subcommands; `python -m training.evaluation TASK --help` for the arguments):

| task | data (reference format) | metrics |
|---|---|---|
| `chexpert5x200-zeroshot` | `chexpert_5x200.csv` (`Path`, the five class columns one-hot) | accuracy, per class |
| `chexpert5x200-i2t` | the same csv (`Report Impression`) | image-to-text P@5/10/100 |
| `rsna-zeroshot` | `test_list.txt` (`<path> <label>` per line) or ids + the stage-2 labels csv | AUROC, ACC, F1 |
| `chexpert8x200-t2i` | `text-retrieval/query.csv` (`Text`, `Variable`) + `candidate.csv` | P@5/10/50 |
| `chexpert8x200-i2i` | `image-retrieval/query.csv` (`Path`, `Variable`) + `candidate.csv` | P@5/10/50 |
| `demo` | a demo split (`processing.demo_data`) saved with `save_to_disk`, or generated | accuracy, i2t/t2i P@5 |

Image paths in the csv files are joined to `--data-root` (the reference joins them to its `chexpert_root`/RSNA root;
absolute paths stay as they are). Every protocol follows alta_reference.md §8: one frontal per image through the
single-frontal path, cosine similarity, class embedding = normalised mean of the unnormalised prompt embeddings, and
the reference's tokenisation per task (CheXpert prompts and 5x200 reports through `process_text`, 128 and 256
tokens; RSNA prompts 10 tokens and 8x200 queries 20 tokens, raw; retrieval texts never truncated). Metrics go
through the local `evaluate` modules in `training/metrics`.

RSNA quirk: the reference picks each fold's threshold by **F1** (in a variable named as if it were accuracy). That
is the default here too, so numbers are comparable; `--select-threshold-by accuracy` picks it by accuracy instead.

Each run writes `<task>_results.json` into `--output-dir`, PNGs (`<task>_confusion_matrix.png`,
`<task>_retrieval.png`, `<task>_heatmap.png`) unless `--no-plots`, and with `--save-embeddings` the embeddings
(`<task>_embeddings.safetensors`) so that the numbers can be recomputed with `training.protocols`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.inference import (
    default_text_length,
    embed_images,
    embed_texts,
    load_model_and_processor,
    model_view,
    word_patch_similarity,
)
from training.retrieval import exact_topk


logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = (
    "chexpert5x200-zeroshot",
    "chexpert5x200-i2t",
    "rsna-zeroshot",
    "chexpert8x200-t2i",
    "chexpert8x200-i2i",
    "demo",
)

# CheXpert label-column indices of the 8x200 classes (the reference scripts' `dic`).
CHEXPERT_8X200_LABELS: dict[str, int] = {
    "No Finding": 0,
    "Cardiomegaly": 2,
    "Edema": 5,
    "Pneumonia": 7,
    "Atelectasis": 8,
    "Pneumothorax": 9,
    "Pleural Effusion": 10,
    "Fracture": 12,
}
CHEXPERT_5X200_TEXT_LENGTH = 256  # reports, padded, not truncated (CheXpert5X200_dataset/datasets_retrieval.py)
CHEXPERT_8X200_QUERY_LENGTH = 20  # queries, padded, not truncated, no cleanup (datasets_text_retrieval.py)


# ---------------------------------------------------------------------------------------------------------------
# 1. Readers for the reference formats
# ---------------------------------------------------------------------------------------------------------------


def _read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"csv file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _require_columns(path: Any, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {list(columns)}")


def _resolve(data_root: str | os.PathLike | None, relative: str, where: str) -> Path:
    if not relative or not relative.strip():
        raise ValueError(f"{where}: empty image path")
    path = Path(data_root or ".") / relative.strip()
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {relative!r} not found at {path}")
    return path


def _is_one(value: str, where: str) -> bool:
    text = (value or "").strip()
    if text == "":
        return False  # blank CheXpert cells mean "not mentioned"
    try:
        return float(text) == 1.0
    except ValueError:
        raise ValueError(f"{where}: label value {value!r} is not a number") from None


def read_chexpert_5x200(
    csv_path: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Read the reference's `chexpert_5x200.csv`.

    Args:
        csv_path: the csv (columns `Path`, `Atelectasis`, `Cardiomegaly`, `Consolidation`, `Edema`,
            `Pleural Effusion`, `Report Impression`, among others).
        data_root: the folder `Path` values are relative to (the reference's `chexpert_root`).

    Returns:
        `(image paths, class indices in CHEXPERT_5X200_CLASSES order, report impressions)`; each row must be
        positive for exactly one of the five classes.
    """
    from processing.prompts import CHEXPERT_5X200_CLASSES

    columns, rows = _read_csv(csv_path)
    _require_columns(csv_path, columns, ["Path", *CHEXPERT_5X200_CLASSES])
    paths, labels, reports = [], [], []
    for i, row in enumerate(rows):
        where = f"{csv_path} data row {i + 1}"  # 1-based, header excluded (reports span lines)
        positive = [c for c, name in enumerate(CHEXPERT_5X200_CLASSES) if _is_one(row[name], f"{where} {name}")]
        if len(positive) != 1:
            values = {name: row[name] for name in CHEXPERT_5X200_CLASSES}
            raise ValueError(f"{where}: needs exactly one positive among the five classes; got {values}")
        paths.append(_resolve(data_root, row["Path"], where))
        labels.append(positive[0])
        reports.append(row.get("Report Impression") or "")
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    return paths, labels, reports


def read_rsna_list(
    list_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
) -> tuple[list[Path], list[int]]:
    """Read an RSNA test list.

    Each non-empty line is `<dicom path> <label>` (the reference's `RSNA_dataset/test_list.txt`, paths relative to
    `data_root`, the reference's `./RSNA_dataset`) or just a path or a patient id; then the label comes from
    `labels_csv` (the challenge's `stage_2_train_labels.csv`: `patientId`, `Target`; a patient with several boxes
    has several rows, positive if any is). An id without a suffix is read as `<id>.dcm`.

    Returns:
        `(dicom paths, labels 0/1)`.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise FileNotFoundError(f"RSNA list not found: {list_path}")
    table: dict[str, int] | None = None
    if labels_csv is not None:
        columns, rows = _read_csv(labels_csv)
        _require_columns(labels_csv, columns, ["patientId", "Target"])
        table = {}
        for i, row in enumerate(rows):
            try:
                target = int(float(row["Target"]))
            except ValueError:
                raise ValueError(f"{labels_csv} data row {i + 1}: Target {row['Target']!r} is not 0 or 1") from None
            table[row["patientId"]] = max(table.get(row["patientId"], 0), target)
    paths, labels = [], []
    for number, line in enumerate(list_path.read_text(encoding="utf-8", errors="ignore").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_path} line {number}"
        name = fields[0] if Path(fields[0]).suffix else f"{fields[0]}.dcm"
        if len(fields) > 1:
            if fields[1] not in ("0", "1"):
                raise ValueError(f"{where}: label {fields[1]!r} must be 0 or 1")
            label = int(fields[1])
        elif table is not None:
            key = Path(name).stem
            if key not in table:
                raise ValueError(f"{where}: patient id {key!r} is not in {labels_csv}")
            label = table[key]
        else:
            raise ValueError(f"{where}: no label on the line and no --labels-csv given ({line.strip()!r})")
        paths.append(_resolve(data_root, name, where))
        labels.append(label)
    if not paths:
        raise ValueError(f"{list_path}: no entries")
    return paths, labels


def read_chexpert_8x200_candidates(
    csv_path: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> tuple[list[Path], list[int]]:
    """Read ConVIRT's 8x200 `candidate.csv`: the image path in column 0, CheXpert label columns from column 5 on.

    Returns:
        `(image paths, labels)`, a label being the position of the row's single positive among the label columns
        (No Finding 0, Cardiomegaly 2, ..., Fracture 12), as the reference computes it.
    """
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"csv file not found: {csv_path}")
    with Path(csv_path).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise ValueError(f"{csv_path}: no candidate rows")
    header, body = rows[0], rows[1:]
    if len(header) < 6:
        raise ValueError(f"{csv_path}: expected the path in column 0 and label columns from column 5; got {header}")
    paths, labels = [], []
    for i, row in enumerate(body):
        where = f"{csv_path} data row {i + 1}"
        positive = [j for j, value in enumerate(row[5:]) if _is_one(value, f"{where} column {header[5 + j]!r}")]
        if len(positive) != 1:
            raise ValueError(
                f"{where}: a candidate needs exactly one positive label column; got {[header[5 + j] for j in positive]}"
            )
        paths.append(_resolve(data_root, row[0], where))
        labels.append(positive[0])
    return paths, labels


def read_chexpert_8x200_queries(
    csv_path: str | os.PathLike, kind: str, data_root: str | os.PathLike | None = None
) -> tuple[list[Any], list[int]]:
    """Read ConVIRT's 8x200 `query.csv`: `Text` (kind `"text"`) or `Path` (kind `"image"`) and `Variable` (the class).

    Returns:
        `(texts or image paths, CheXpert label indices of CHEXPERT_8X200_LABELS)`.
    """
    column = {"text": "Text", "image": "Path"}.get(kind)
    if column is None:
        raise ValueError(f"`kind` must be 'text' or 'image'; got {kind!r}")
    columns, rows = _read_csv(csv_path)
    _require_columns(csv_path, columns, [column, "Variable"])
    items, labels = [], []
    for i, row in enumerate(rows):
        where = f"{csv_path} data row {i + 1}"
        variable = (row["Variable"] or "").strip()
        if variable not in CHEXPERT_8X200_LABELS:
            raise ValueError(f"{where}: Variable {variable!r} is not one of {list(CHEXPERT_8X200_LABELS)}")
        if kind == "text":
            if not (row[column] or "").strip():
                raise ValueError(f"{where}: empty query Text")
            items.append(row[column])
        else:
            items.append(_resolve(data_root, row[column], where))
        labels.append(CHEXPERT_8X200_LABELS[variable])
    if not rows:
        raise ValueError(f"{csv_path}: no query rows")
    return items, labels


# ---------------------------------------------------------------------------------------------------------------
# 2. Shared pieces: metrics through `evaluate`, figures, output files
# ---------------------------------------------------------------------------------------------------------------


def _usable_ks(ks: Sequence[int], gallery_size: int, task: str) -> list[int]:
    """The cut-offs a gallery of this size supports (small test sets cannot have P@100); dropped ones are logged."""
    usable = [k for k in ks if k <= gallery_size]
    if len(usable) < len(ks):
        logger.warning(
            "%s: gallery of %d items; skipping P@K for K in %s",
            task,
            gallery_size,
            [k for k in ks if k > gallery_size],
        )
    return usable or [gallery_size]


def _metric(name: str):
    from training.metrics import load_metric

    return load_metric(name)


def precision_at_k_metric(
    query_embeds: torch.Tensor,
    gallery_embeds: torch.Tensor,
    query_labels: Sequence[int],
    gallery_labels: Sequence[int],
    ks: Sequence[int],
) -> tuple[dict[str, float], Any]:
    """P@K through the `alta_precision_at_k` module, on the exact chunked top-k (ties to the lower index).

    Returns:
        `({"p@K": ...}, TopKResult)`.
    """
    top = exact_topk(query_embeds, gallery_embeds, max(ks))
    ranked = np.asarray(gallery_labels)[top.indices.numpy()]
    scores = _metric("alta_precision_at_k").compute(
        predictions=ranked.tolist(), references=[int(x) for x in query_labels], k=list(ks)
    )
    return {k: float(v) for k, v in scores.items()}, top


def zero_shot_accuracy_metric(predictions: Sequence[int], references: Sequence[int], class_names: Sequence[str]):
    """Accuracy and per-class accuracy through the `alta_zero_shot_accuracy` module."""
    return _metric("alta_zero_shot_accuracy").compute(
        predictions=[int(p) for p in predictions],
        references=[int(r) for r in references],
        class_names=list(class_names),
    )


def _thumbnail(processor: Any, item: Any, size: int = 256, dicom_rule: str | None = None) -> Any:
    if isinstance(item, str):
        return item  # a report text (image paths are `Path` objects or decoded images here)
    image_processor = getattr(processor, "image_processor", processor)
    image = image_processor.load(item, dicom_rule).convert("L")
    image.thumbnail((size, size))
    return image


def _example_rows(labels: Sequence[int], max_rows: int) -> list[int]:
    """The first query of each label, in label order of first appearance, at most `max_rows`."""
    seen: dict[int, int] = {}
    for i, label in enumerate(labels):
        seen.setdefault(int(label), i)
    return list(seen.values())[:max_rows]


class _Figures:
    """Writes the PNGs of one task (or nothing, without an output folder or matplotlib)."""

    def __init__(self, output_dir: Path | None, prefix: str, enabled: bool = True) -> None:
        self.output_dir, self.prefix, self.written = output_dir, prefix, {}
        self.enabled = enabled and output_dir is not None
        if self.enabled:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                logger.warning("matplotlib is not installed: no PNGs (install the `eval` extra)")
                self.enabled = False

    def path(self, name: str) -> Path:
        return self.output_dir / f"{self.prefix}_{name}.png"

    def confusion(self, predictions, references, class_names) -> None:
        if not self.enabled:
            return
        from training.plots import plot_confusion_matrix
        from training.protocols import confusion_matrix

        matrix = confusion_matrix(predictions, references, num_classes=len(class_names))
        self.written["confusion_matrix"] = str(
            plot_confusion_matrix(matrix, list(class_names), self.path("confusion_matrix"), normalize=True)
        )

    def retrieval(self, processor, queries, gallery, query_labels, gallery_labels, top, names, title, rows=5, hits=5):
        if not self.enabled:
            return
        from training.plots import plot_retrieval_examples

        chosen = _example_rows(query_labels, rows)
        n_hits = min(hits, top.indices.shape[1])
        sheet_queries, sheet_hits, sheet_scores, relevant, captions = [], [], [], [], []
        for q in chosen:
            idx = top.indices[q, :n_hits].tolist()
            sheet_queries.append(_thumbnail(processor, queries[q]))
            sheet_hits.append([_thumbnail(processor, gallery[j]) for j in idx])
            sheet_scores.append(top.scores[q, :n_hits].tolist())
            relevant.append([gallery_labels[j] == query_labels[q] for j in idx])
            captions.append(names.get(int(query_labels[q]), str(query_labels[q])))
        self.written["retrieval"] = str(
            plot_retrieval_examples(
                sheet_queries, sheet_hits, sheet_scores, self.path("retrieval"), relevant, captions, title
            )
        )

    def heatmap(self, model, processor, image, phrase: str, dicom_rule: str | None = None) -> None:
        if not self.enabled:
            return
        from training.plots import plot_similarity_heatmap

        sim = word_patch_similarity(model, processor, image, phrase, dicom_rule=dicom_rule)
        view = model_view(processor, image, dicom_rule)
        self.written["heatmap"] = str(plot_similarity_heatmap(view, sim, self.path("heatmap"), phrase=phrase))


def _save_embeddings(output_dir: Path | None, task: str, tensors: dict[str, torch.Tensor]) -> str | None:
    if output_dir is None:
        return None
    from safetensors.torch import save_file

    path = output_dir / f"{task}_embeddings.safetensors"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(path))
    return str(path)


def _finish(result: dict[str, Any], output_dir: Path | None, task: str) -> dict[str, Any]:
    if output_dir is not None:
        path = output_dir / f"{task}_results.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        result["results_file"] = str(path)
    return result


def _prepare(model: Any, processor: Any, output_dir: str | os.PathLike | None) -> tuple[Any, Any, Path | None]:
    model, processor = load_model_and_processor(model, processor)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return model, processor, out


def _model_name(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


# ---------------------------------------------------------------------------------------------------------------
# 3. The protocols
# ---------------------------------------------------------------------------------------------------------------


def evaluate_chexpert_5x200_zero_shot(
    model: Any,
    csv_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    processor: Any = None,
    batch_size: int = 32,
    plots: bool = True,
    save_embeddings: bool = False,
    heatmap_phrase: str | None = None,
) -> dict[str, Any]:
    """CheXpert 5x200 zero-shot: the reference prompt grid (489 prompts, `process_text`, 128 tokens), argmax over
    the five class cosines, accuracy overall and per class.

    Returns:
        `{"task", "accuracy", "per_class_accuracy", "num_samples", "class_names", "model", "figures", ...}`.
    """
    from training.zero_shot import ZeroShotClassifier

    task = "chexpert5x200-zeroshot"
    model, processor, out = _prepare(model, processor, output_dir)
    paths, labels, _ = read_chexpert_5x200(csv_path, data_root)
    clf = ZeroShotClassifier(model, processor, "chexpert5x200", clean_text=True, max_length=128)
    image_embeds = embed_images(model, processor, paths, batch_size)
    pred = clf.scores_from_embeddings(image_embeds)
    metrics = zero_shot_accuracy_metric(pred.predictions.tolist(), labels, clf.class_names)
    figures = _Figures(out, task, plots)
    figures.confusion(pred.predictions, labels, clf.class_names)
    phrase = heatmap_phrase or clf.class_names[labels[0]].lower()
    figures.heatmap(model, processor, paths[0], phrase)
    result = {"task": task, **metrics, "class_names": clf.class_names, "model": _model_name(model)}
    if save_embeddings:
        result["embeddings_file"] = _save_embeddings(
            out, task, {"image_embeds": image_embeds, "class_embeds": clf.class_embeddings}
        )
    result["figures"] = figures.written
    return _finish(result, out, task)


def evaluate_chexpert_5x200_image_to_text(
    model: Any,
    csv_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    processor: Any = None,
    batch_size: int = 32,
    ks: Sequence[int] = (5, 10, 100),
    plots: bool = True,
    save_embeddings: bool = False,
) -> dict[str, Any]:
    """CheXpert 5x200 image-to-text retrieval: image queries against all `Report Impression` texts of the csv
    (`process_text`, padded to 256, not truncated), relevant = same class; P@5/10/100."""
    from processing.prompts import CHEXPERT_5X200_CLASSES

    task = "chexpert5x200-i2t"
    model, processor, out = _prepare(model, processor, output_dir)
    paths, labels, reports = read_chexpert_5x200(csv_path, data_root)
    ks = _usable_ks(ks, len(reports), task)
    image_embeds = embed_images(model, processor, paths, batch_size)
    text_embeds = embed_texts(
        model, processor, reports, batch_size, max_length=CHEXPERT_5X200_TEXT_LENGTH, clean_text=True, truncation=False
    )
    metrics, top = precision_at_k_metric(image_embeds, text_embeds, labels, labels, ks)
    figures = _Figures(out, task, plots)
    names = dict(enumerate(CHEXPERT_5X200_CLASSES))
    figures.retrieval(processor, paths, reports, labels, labels, top, names, "CheXpert 5x200 image-to-text")
    result = {"task": task, **metrics, "num_queries": len(paths), "model": _model_name(model)}
    if save_embeddings:
        result["embeddings_file"] = _save_embeddings(
            out, task, {"image_embeds": image_embeds, "text_embeds": text_embeds}
        )
    result["figures"] = figures.written
    return _finish(result, out, task)


def evaluate_rsna_zero_shot(
    model: Any,
    list_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    processor: Any = None,
    batch_size: int = 32,
    select_threshold_by: str = "f1",
    n_splits: int = 10,
    plots: bool = True,
    save_embeddings: bool = False,
) -> dict[str, Any]:
    """RSNA pneumonia zero-shot: DICOMs through the reference's RSNA rule, score = softmax([cos_pos, cos_neg])[0]
    for "There is pneumonia" / "There is no pneumonia" (10 tokens, raw); AUROC, and ACC/F1 of the 10-fold threshold
    search (threshold chosen by `select_threshold_by`, "f1" as the reference does)."""
    from processing.prompts import RSNA_NEGATIVE_PROMPT, RSNA_POSITIVE_PROMPT, RSNA_PROMPT_MAX_LENGTH
    from training.protocols import rsna_zero_shot_scores

    if select_threshold_by not in ("f1", "accuracy"):
        raise ValueError(f"`select_threshold_by` must be 'f1' or 'accuracy'; got {select_threshold_by!r}")
    task = "rsna-zeroshot"
    model, processor, out = _prepare(model, processor, output_dir)
    paths, labels = read_rsna_list(list_path, data_root, labels_csv)
    image_embeds = embed_images(model, processor, paths, batch_size, dicom_rule="rsna")
    prompts = embed_texts(
        model,
        processor,
        [RSNA_POSITIVE_PROMPT, RSNA_NEGATIVE_PROMPT],
        normalize=False,
        max_length=RSNA_PROMPT_MAX_LENGTH,
        truncation=False,
    )
    scores = rsna_zero_shot_scores(image_embeds, prompts[0], prompts[1])
    metrics = _metric("alta_rsna_zero_shot").compute(
        predictions=[float(s) for s in scores], references=labels, select_by=select_threshold_by, n_splits=n_splits
    )
    figures = _Figures(out, task, plots)
    first_positive = next((i for i, y in enumerate(labels) if y == 1), 0)
    figures.heatmap(model, processor, paths[first_positive], "pneumonia", dicom_rule="rsna")
    result = {
        "task": task,
        **metrics,
        "num_samples": len(labels),
        "num_positive": int(sum(labels)),
        "model": _model_name(model),
    }
    if save_embeddings:
        result["embeddings_file"] = _save_embeddings(
            out,
            task,
            {"image_embeds": image_embeds, "positive_embed": prompts[0], "negative_embed": prompts[1]},
        )
    result["figures"] = figures.written
    return _finish(result, out, task)


def _names_8x200() -> dict[int, str]:
    return {v: k for k, v in CHEXPERT_8X200_LABELS.items()}


def evaluate_chexpert_8x200_text_to_image(
    model: Any,
    query_csv: str | os.PathLike,
    candidate_csv: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    processor: Any = None,
    batch_size: int = 32,
    ks: Sequence[int] = (5, 10, 50),
    plots: bool = True,
    save_embeddings: bool = False,
) -> dict[str, Any]:
    """CheXpert 8x200 text-to-image: `Text` queries (20 tokens, raw, not truncated) against the candidate images;
    relevant = same CheXpert label; P@5/10/50."""
    task = "chexpert8x200-t2i"
    model, processor, out = _prepare(model, processor, output_dir)
    texts, query_labels = read_chexpert_8x200_queries(query_csv, "text")
    paths, labels = read_chexpert_8x200_candidates(candidate_csv, data_root)
    ks = _usable_ks(ks, len(paths), task)
    text_embeds = embed_texts(
        model, processor, texts, batch_size, max_length=CHEXPERT_8X200_QUERY_LENGTH, truncation=False
    )
    image_embeds = embed_images(model, processor, paths, batch_size)
    return _finish_8x200(
        task, model, processor, out, (texts, query_labels, text_embeds), (paths, labels, image_embeds), ks,
        "CheXpert 8x200 text-to-image", plots, save_embeddings,
    )  # fmt: skip


def evaluate_chexpert_8x200_image_to_image(
    model: Any,
    query_csv: str | os.PathLike,
    candidate_csv: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    processor: Any = None,
    batch_size: int = 32,
    ks: Sequence[int] = (5, 10, 50),
    plots: bool = True,
    save_embeddings: bool = False,
) -> dict[str, Any]:
    """CheXpert 8x200 image-to-image: query images (`Path`, `Variable`) against the candidate images; P@5/10/50."""
    task = "chexpert8x200-i2i"
    model, processor, out = _prepare(model, processor, output_dir)
    query_paths, query_labels = read_chexpert_8x200_queries(query_csv, "image", data_root)
    paths, labels = read_chexpert_8x200_candidates(candidate_csv, data_root)
    ks = _usable_ks(ks, len(paths), task)
    query_embeds = embed_images(model, processor, query_paths, batch_size)
    image_embeds = embed_images(model, processor, paths, batch_size)
    return _finish_8x200(
        task, model, processor, out, (query_paths, query_labels, query_embeds), (paths, labels, image_embeds), ks,
        "CheXpert 8x200 image-to-image", plots, save_embeddings,
    )  # fmt: skip


def _finish_8x200(
    task: str,
    model: Any,
    processor: Any,
    out: Path,
    queries: tuple[list, list, torch.Tensor],
    candidates: tuple[list, list, torch.Tensor],
    ks: Sequence[int],
    title: str,
    plots: bool,
    save_embeddings: bool,
) -> dict[str, Any]:
    """P@K, the retrieval sheet, the optional embeddings file and the results JSON of an 8x200 retrieval task.

    `queries` / `candidates` are `(items, labels, embeddings [N, P])`."""
    query_items, query_labels, query_embeds = queries
    paths, labels, image_embeds = candidates
    metrics, top = precision_at_k_metric(query_embeds, image_embeds, query_labels, labels, ks)
    figures = _Figures(out, task, plots)
    figures.retrieval(processor, query_items, paths, query_labels, labels, top, _names_8x200(), title)
    result = {"task": task, **metrics, "num_queries": len(query_items), "num_candidates": len(paths)}
    result["model"] = _model_name(model)
    if save_embeddings:
        result["embeddings_file"] = _save_embeddings(
            out, task, {"query_embeds": query_embeds, "candidate_embeds": image_embeds}
        )
    result["figures"] = figures.written
    return _finish(result, out, task)


# ---------------------------------------------------------------------------------------------------------------
# 4. The demo
# ---------------------------------------------------------------------------------------------------------------


def _demo_split(dataset_split: Any, split: str = "test") -> Any:
    if isinstance(dataset_split, str | os.PathLike):
        import datasets

        loaded = datasets.load_from_disk(str(dataset_split))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{dataset_split}: no split {split!r}; has {list(loaded)}")
            loaded = loaded[split]
        dataset_split = loaded
    columns = getattr(dataset_split, "column_names", None)
    if columns is None:
        raise TypeError(f"expected a datasets.Dataset (or a save_to_disk folder); got {type(dataset_split).__name__}")
    missing = [c for c in ("frontal", "report", "label") if c not in columns]
    if missing:
        raise ValueError(f"the demo split lacks column(s) {missing}; it has {columns}")
    return dataset_split


def evaluate_demo(
    model_dir_or_model: Any,
    dataset_split: Any,
    output_dir: str | os.PathLike | None = None,
    frontal_only: bool = False,
    processor: Any = None,
    batch_size: int = 32,
    class_prompts: dict[str, list[str]] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy on the demo classes and image/report retrieval P@5 on a held-out demo split.

    Inputs are whole studies (current frontal, lateral, priors; `view_mask` from the missing views) through the
    model's multiview/temporal path, or with `frontal_only=True` the current frontal alone through the
    single-frontal path (the reference's evaluation path). Zero-shot uses `demo_class_prompts()` (raw text, the
    model's training length); a study's label must be one of its classes. Retrieval: i2t = each study's image
    embedding against all reports of the split, t2i = each report against all studies; relevant = same label.

    Args:
        model_dir_or_model: a model folder (`align.py`'s `model/`, `save_pretrained`, `alta-convert`) or a model.
        dataset_split: a demo `datasets.Dataset` (columns `frontal`, `lateral`, `prior_frontal`, `prior_lateral`,
            `report`, `label`), or a `save_to_disk` folder (its `test` split if it holds a `DatasetDict`).
        output_dir: where to write `demo_results.json` and the PNGs (confusion matrix, i2t retrieval sheet, heatmap);
            `None` writes nothing.
        frontal_only: use only the current frontal.
        processor: default: the one saved with the model.

    Returns:
        `{"zero_shot_accuracy", "per_class_accuracy", "i2t_p@5", "t2i_p@5", "chance_accuracy", "num_studies",
        "class_names", "frontal_only", "figures"}`.
    """
    from training.zero_shot import ZeroShotClassifier

    task = "demo"
    model, processor, out = _prepare(model_dir_or_model, processor, output_dir)
    ds = _demo_split(dataset_split)
    view_columns = [c for c in ("frontal", "lateral", "prior_frontal", "prior_lateral") if c in ds.column_names]
    columns = {c: list(ds[c]) for c in [*view_columns, "report", "label"]}
    n = len(columns["label"])
    if frontal_only:
        inputs: list[Any] = columns["frontal"]
    else:
        inputs = [{c: columns[c][i] for c in view_columns} for i in range(n)]
    for i, frontal in enumerate(columns["frontal"]):
        if frontal is None:
            raise ValueError(f"demo split row {i} (study {ds[i].get('study_id', i)!r}) has no frontal image")
    clf = ZeroShotClassifier(
        model, processor, class_prompts or "demo", clean_text=False, max_length=default_text_length(model)
    )
    names = clf.class_names
    unknown = sorted({label for label in columns["label"] if label not in names})
    if unknown:
        raise ValueError(f"demo split labels {unknown} are not among the prompt classes {names}")
    labels = [names.index(label) for label in columns["label"]]
    image_embeds = embed_images(model, processor, inputs, batch_size)
    text_embeds = embed_texts(model, processor, columns["report"], batch_size)
    pred = clf.scores_from_embeddings(image_embeds)
    zero_shot = zero_shot_accuracy_metric(pred.predictions.tolist(), labels, names)
    k = min(5, n)
    i2t, top_i2t = precision_at_k_metric(image_embeds, text_embeds, labels, labels, [k])
    t2i, _ = precision_at_k_metric(text_embeds, image_embeds, labels, labels, [k])
    figures = _Figures(out, task, plots)
    figures.confusion(pred.predictions, labels, names)
    figures.retrieval(
        processor, columns["frontal"], columns["report"], labels, labels, top_i2t, dict(enumerate(names)),
        "Demo image-to-report retrieval (frontal shown)",
    )  # fmt: skip
    finding = next((i for i, y in enumerate(columns["label"]) if y != "No Finding"), 0)
    figures.heatmap(model, processor, columns["frontal"][finding], columns["label"][finding].lower())
    result = {
        "task": task,
        "zero_shot_accuracy": zero_shot["accuracy"],
        "per_class_accuracy": zero_shot["per_class_accuracy"],
        "i2t_p@5": i2t[f"p@{k}"],
        "t2i_p@5": t2i[f"p@{k}"],
        "chance_accuracy": 1.0 / len(names),
        "num_studies": n,
        "class_names": names,
        "frontal_only": frontal_only,
        "model": _model_name(model),
        "figures": figures.written,
    }
    return _finish(result, out, task)


# ---------------------------------------------------------------------------------------------------------------
# 5. Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alta-evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", required=True, help="model folder (alta-convert, save_pretrained or align.py model/)"
        )
        p.add_argument("--output-dir", default=None, help="results folder (default outputs/eval/<task>)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--no-plots", action="store_true", help="write no PNGs")
        p.add_argument("--save-embeddings", action="store_true", help="also write <task>_embeddings.safetensors")

    def data_root(p: argparse.ArgumentParser, help_text: str) -> None:
        p.add_argument("--data-root", default=".", help=help_text)

    p = sub.add_parser("chexpert5x200-zeroshot", help="CheXpert 5x200 zero-shot accuracy")
    common(p)
    p.add_argument("--csv", required=True, help="chexpert_5x200.csv")
    data_root(p, "folder the csv's Path values are relative to (the reference's chexpert_root)")
    p.add_argument("--heatmap-phrase", default=None, help="phrase for the heatmap (default: the first image's class)")

    p = sub.add_parser("chexpert5x200-i2t", help="CheXpert 5x200 image-to-text P@5/10/100")
    common(p)
    p.add_argument("--csv", required=True, help="chexpert_5x200.csv")
    data_root(p, "folder the csv's Path values are relative to")

    p = sub.add_parser("rsna-zeroshot", help="RSNA pneumonia zero-shot AUROC / ACC / F1")
    common(p)
    p.add_argument("--list", required=True, help="test_list.txt: '<dicom path> <label>' per line, or ids/paths only")
    data_root(p, "folder the list's paths are relative to (the reference's ./RSNA_dataset)")
    p.add_argument(
        "--labels-csv", default=None, help="stage_2_train_labels.csv (patientId, Target) for unlabeled lists"
    )
    p.add_argument(
        "--select-threshold-by",
        choices=("f1", "accuracy"),
        default="f1",
        help="metric maximised on the training folds (default f1, the reference's choice)",
    )
    p.add_argument("--n-splits", type=int, default=10, help="stratified folds (10 in the reference)")

    for name, kind in (("chexpert8x200-t2i", "text"), ("chexpert8x200-i2i", "image")):
        p = sub.add_parser(name, help=f"CheXpert 8x200 {kind}-to-image P@5/10/50")
        common(p)
        p.add_argument("--query-csv", required=True, help=f"{kind}-retrieval/query.csv")
        p.add_argument("--candidate-csv", required=True, help=f"{kind}-retrieval/candidate.csv")
        data_root(p, "folder the csv's image paths are relative to (the reference's chexpert_root)")

    p = sub.add_parser("demo", help="demo split: zero-shot accuracy on the demo classes, i2t/t2i P@5")
    common(p)
    p.add_argument("--dataset", default=None, help="save_to_disk folder of the demo data (default: generate it)")
    p.add_argument("--split", default="test")
    p.add_argument("--num-studies", type=int, default=300, help="when generating: studies over all splits")
    p.add_argument("--seed", type=int, default=0, help="when generating")
    p.add_argument("--image-size", type=int, default=256, help="when generating")
    p.add_argument("--frontal-only", action="store_true", help="current frontal only (the reference's eval path)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the task described by parsed arguments (see `build_parser`)."""
    output_dir = args.output_dir or os.path.join("outputs", "eval", args.task)
    model, processor = load_model_and_processor(args.model, device=args.device)
    shared = {
        "output_dir": output_dir,
        "processor": processor,
        "batch_size": args.batch_size,
        "plots": not args.no_plots,
    }
    if args.task == "chexpert5x200-zeroshot":
        return evaluate_chexpert_5x200_zero_shot(
            model, args.csv, args.data_root, save_embeddings=args.save_embeddings, heatmap_phrase=args.heatmap_phrase,
            **shared,
        )  # fmt: skip
    if args.task == "chexpert5x200-i2t":
        return evaluate_chexpert_5x200_image_to_text(
            model, args.csv, args.data_root, save_embeddings=args.save_embeddings, **shared
        )
    if args.task == "rsna-zeroshot":
        return evaluate_rsna_zero_shot(
            model, args.list, args.data_root, args.labels_csv, select_threshold_by=args.select_threshold_by,
            n_splits=args.n_splits, save_embeddings=args.save_embeddings, **shared,
        )  # fmt: skip
    if args.task == "chexpert8x200-t2i":
        return evaluate_chexpert_8x200_text_to_image(
            model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings, **shared
        )
    if args.task == "chexpert8x200-i2i":
        return evaluate_chexpert_8x200_image_to_image(
            model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings, **shared
        )
    if args.task == "demo":
        if args.dataset is not None:
            split = _demo_split(args.dataset, args.split)
        else:
            from processing.demo_data import generate_demo_dataset

            split = generate_demo_dataset(args.num_studies, seed=args.seed, image_size=args.image_size)[args.split]
        shared.pop("output_dir")
        return evaluate_demo(model, split, output_dir, frontal_only=args.frontal_only, **shared)
    raise ValueError(f"unknown task {args.task!r}; choose one of {TASKS}")


def main(argv: list[str] | None = None) -> int:
    """`alta-evaluate TASK ...`: run one benchmark, print its results as JSON, write them to the output folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


__all__ = [
    "CHEXPERT_8X200_LABELS",
    "TASKS",
    "build_parser",
    "evaluate_chexpert_5x200_image_to_text",
    "evaluate_chexpert_5x200_zero_shot",
    "evaluate_chexpert_8x200_image_to_image",
    "evaluate_chexpert_8x200_text_to_image",
    "evaluate_demo",
    "evaluate_rsna_zero_shot",
    "main",
    "precision_at_k_metric",
    "read_chexpert_5x200",
    "read_chexpert_8x200_candidates",
    "read_chexpert_8x200_queries",
    "read_rsna_list",
    "run",
    "zero_shot_accuracy_metric",
]


if __name__ == "__main__":
    sys.exit(main())
