"""CheXpert 5x200: zero-shot classification (`chexpert5x200-zeroshot`) and image-to-text retrieval
(`chexpert5x200-i2t`), on the reference's `chexpert_5x200.csv`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from processing.prompts import CHEXPERT_5X200_CLASSES

from .readers import input_columns, is_positive, read_csv, refuse_duplicates, require_columns, resolve_image
from .registry import InputFile, Protocol
from .results import (
    Figures,
    embed_readable_images,
    embed_texts_with_progress,
    finish_task,
    model_name,
    precision_at_k_metric,
    prepare,
    select,
    skip_report,
    usable_ks,
    zero_shot_accuracy_metric,
)


CHEXPERT_5X200_TEXT_LENGTH = 256  # reports, padded, not truncated (CheXpert5X200_dataset/datasets_retrieval.py)
REPORT_COLUMN = "Report Impression"


def read_chexpert_5x200(
    csv_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    columns: Sequence[str] | None = None,
    allow_absolute_paths: bool = False,
) -> tuple[list[Path], list[int], list[str], list[str]]:
    """Read the reference's `chexpert_5x200.csv`.

    Args:
        csv_path: the csv (columns `Path`, `Atelectasis`, `Cardiomegaly`, `Consolidation`, `Edema`,
            `Pleural Effusion`, `Report Impression`, among others).
        data_root: the folder `Path` values are relative to (the reference's `chexpert_root`); paths must stay in it.
        columns: the columns the task needs (the registry's declaration; default `Path` and the five classes). When
            `Report Impression` is among them, every row needs a non-empty one.
        allow_absolute_paths: accept absolute `Path` values.

    Returns:
        `(image paths, class indices in CHEXPERT_5X200_CLASSES order, report impressions, row descriptions)`; each
        row must be positive for exactly one of the five classes, and no image may be listed twice.
    """
    required = list(columns) if columns is not None else ["Path", *CHEXPERT_5X200_CLASSES]
    header, rows = read_csv(csv_path)
    require_columns(csv_path, header, required)
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    paths, labels, reports, wheres = [], [], [], []
    empty_reports = []
    for i, row in enumerate(rows):
        where = f"{csv_path} data row {i + 1}"  # 1-based, header excluded (reports span lines)
        positive = [c for c, name in enumerate(CHEXPERT_5X200_CLASSES) if is_positive(row[name], f"{where} {name}")]
        if len(positive) != 1:
            values = {name: row[name] for name in CHEXPERT_5X200_CLASSES}
            raise ValueError(f"{where}: needs exactly one positive among the five classes; got {values}")
        paths.append(resolve_image(data_root, row["Path"], where, allow_absolute_paths))
        labels.append(positive[0])
        report = row.get(REPORT_COLUMN) or ""
        if REPORT_COLUMN in required and not report.strip():
            empty_reports.append(i + 1)
        reports.append(report)
        wheres.append(where)
    if empty_reports:
        raise ValueError(
            f"{csv_path}: column {REPORT_COLUMN!r} is empty in data row(s) {empty_reports[:10]}"
            f"{' ...' if len(empty_reports) > 10 else ''}; this task scores images against those texts"
        )
    refuse_duplicates([str(p) for p in paths], wheres, "image path")
    return paths, labels, reports, wheres


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
    allow_absolute_paths: bool = False,
) -> dict[str, Any]:
    """CheXpert 5x200 zero-shot: the reference prompt grid (489 prompts, `process_text`, 128 tokens), argmax over
    the five class cosines, accuracy overall and per class. Unreadable images are skipped, counted and listed
    (`num_skipped`, `skipped_images`); the accuracy is over the readable ones.

    Returns:
        `{"task", "accuracy", "per_class_accuracy", "num_samples", "class_names", "model", "figures", ...}`.
    """
    from inference.zero_shot import ZeroShotClassifier

    task = "chexpert5x200-zeroshot"
    paths, labels, _, wheres = read_chexpert_5x200(
        csv_path, data_root, input_columns(task, "--csv"), allow_absolute_paths
    )
    model, processor, out = prepare(model, processor, output_dir)
    clf = ZeroShotClassifier(model, processor, "chexpert5x200", clean_text=True, max_length=128)
    image_embeds, kept, skipped = embed_readable_images(
        model, processor, paths, wheres, batch_size, desc="CheXpert 5x200 images", source=f"--data-root {data_root}"
    )
    paths, labels = select(paths, kept), select(labels, kept)
    pred = clf.scores_from_embeddings(image_embeds)
    metrics = zero_shot_accuracy_metric(pred.predictions.tolist(), labels, clf.class_names)
    result = {
        "task": task,
        **metrics,
        **skip_report(skipped),
        "class_names": clf.class_names,
        "model": model_name(model),
    }
    embeddings = {"image_embeds": image_embeds, "class_embeds": clf.class_embeddings, "rows": torch.tensor(kept)}
    figures = Figures(out, task, plots)

    def draw() -> None:
        figures.confusion(pred.predictions, labels, clf.class_names)
        figures.heatmap(model, processor, paths[0], heatmap_phrase or clf.class_names[labels[0]].lower())

    return finish_task(result, out, task, figures, embeddings if save_embeddings else None, draw)


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
    allow_absolute_paths: bool = False,
) -> dict[str, Any]:
    """CheXpert 5x200 image-to-text retrieval: image queries against all `Report Impression` texts of the csv
    (`process_text`, padded to 256, not truncated), relevant = same class; P@5/10/100. The column is required and
    must not be empty. Unreadable images are skipped as queries (their reports stay in the gallery)."""
    task = "chexpert5x200-i2t"
    paths, labels, reports, wheres = read_chexpert_5x200(
        csv_path, data_root, input_columns(task, "--csv"), allow_absolute_paths
    )
    model, processor, out = prepare(model, processor, output_dir)
    ks = usable_ks(ks, len(reports), task)
    image_embeds, kept, skipped = embed_readable_images(
        model, processor, paths, wheres, batch_size, desc="CheXpert 5x200 images", source=f"--data-root {data_root}"
    )
    text_embeds = embed_texts_with_progress(
        model, processor, reports, batch_size, desc="CheXpert 5x200 reports",
        max_length=CHEXPERT_5X200_TEXT_LENGTH, clean_text=True, truncation=False,
    )  # fmt: skip
    query_paths, query_labels = select(paths, kept), select(labels, kept)
    metrics, top = precision_at_k_metric(image_embeds, text_embeds, query_labels, labels, ks)
    result = {"task": task, **metrics, "num_queries": len(kept), **skip_report(skipped), "model": model_name(model)}
    embeddings = {"image_embeds": image_embeds, "text_embeds": text_embeds, "rows": torch.tensor(kept)}
    figures = Figures(out, task, plots)
    names = dict(enumerate(CHEXPERT_5X200_CLASSES))

    def draw() -> None:
        title = "CheXpert 5x200 image-to-text"
        figures.retrieval(processor, query_paths, reports, query_labels, labels, top, names, title)

    return finish_task(result, out, task, figures, embeddings if save_embeddings else None, draw)


def _run_zero_shot(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_5x200_zero_shot(
        model, args.csv, args.data_root, save_embeddings=args.save_embeddings, heatmap_phrase=args.heatmap_phrase,
        allow_absolute_paths=args.allow_absolute_paths, **common,
    )  # fmt: skip


def _run_image_to_text(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_5x200_image_to_text(
        model, args.csv, args.data_root, save_embeddings=args.save_embeddings,
        allow_absolute_paths=args.allow_absolute_paths, **common,
    )  # fmt: skip


def _heatmap_phrase(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heatmap-phrase", default=None, help="phrase for the heatmap (default: the first image's class)"
    )


_CSV_HELP = "chexpert_5x200.csv; `Path` is relative to --data-root, each row positive (1) for exactly one class"
PROTOCOLS = (
    Protocol(
        name="chexpert5x200-zeroshot",
        summary="CheXpert 5x200 zero-shot accuracy (489-prompt grid, process_text, 128 tokens)",
        inputs=(InputFile("--csv", _CSV_HELP, ("Path", *CHEXPERT_5X200_CLASSES)),),
        metrics=("accuracy", "per_class_accuracy"),
        run=_run_zero_shot,
        add_arguments=_heatmap_phrase,
        data_root_help="folder the csv's Path values are relative to (the reference's chexpert_root)",
    ),
    Protocol(
        name="chexpert5x200-i2t",
        summary="CheXpert 5x200 image-to-text retrieval P@5/10/100 against the csv's report impressions",
        inputs=(InputFile("--csv", _CSV_HELP, ("Path", *CHEXPERT_5X200_CLASSES, REPORT_COLUMN)),),
        metrics=("p@5", "p@10", "p@100"),
        run=_run_image_to_text,
        data_root_help="folder the csv's Path values are relative to (the reference's chexpert_root)",
        notes="Reports go through process_text, padded to 256 tokens and never truncated; relevant = same class.",
    ),
)


__all__ = [
    "CHEXPERT_5X200_TEXT_LENGTH",
    "PROTOCOLS",
    "evaluate_chexpert_5x200_image_to_text",
    "evaluate_chexpert_5x200_zero_shot",
    "read_chexpert_5x200",
]
