"""RSNA pneumonia zero-shot (`rsna-zeroshot`): AUROC, and accuracy/F1 of the 10-fold threshold search.

RSNA quirk: the reference picks each fold's threshold by **F1** (in a variable named as if it were accuracy). That
is the default here too, so numbers are comparable; `--select-threshold-by accuracy` picks it by accuracy instead.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inference.embedding import embed_texts

from .readers import input_columns, read_csv, read_text_file, refuse_duplicates, require_columns, resolve_image
from .registry import InputFile, Protocol
from .results import (
    Figures,
    embed_readable_images,
    finish_task,
    load_metric,
    model_name,
    prepare,
    select,
    skip_report,
)


def read_rsna_list(
    list_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    allow_absolute_paths: bool = False,
) -> tuple[list[Path], list[int], list[str]]:
    """Read an RSNA test list.

    Each non-empty line is `<dicom path> <label>` (the reference's `RSNA_dataset/test_list.txt`, paths relative to
    `data_root`, the reference's `./RSNA_dataset`) or just a path or a patient id; then the label comes from
    `labels_csv` (the challenge's `stage_2_train_labels.csv`: `patientId`, `Target`; a patient with several boxes
    has several rows, positive if any is). An id without a suffix is read as `<id>.dcm`. Paths must stay inside
    `data_root` (absolute ones only with `allow_absolute_paths`), and a DICOM listed twice is refused.

    Returns:
        `(dicom paths, labels 0/1, line descriptions)`.
    """
    text = read_text_file(list_path, "RSNA list")
    table: dict[str, int] | None = None
    if labels_csv is not None:
        columns, rows = read_csv(labels_csv)
        require_columns(labels_csv, columns, input_columns("rsna-zeroshot", "--labels-csv"))
        table = {}
        for i, row in enumerate(rows):
            try:
                target = int(float(row["Target"]))
            except ValueError:
                raise ValueError(f"{labels_csv} data row {i + 1}: Target {row['Target']!r} is not 0 or 1") from None
            table[row["patientId"]] = max(table.get(row["patientId"], 0), target)
    paths, labels, wheres = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
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
        paths.append(resolve_image(data_root, name, where, allow_absolute_paths))
        labels.append(label)
        wheres.append(where)
    if not paths:
        raise ValueError(f"{list_path}: no entries")
    refuse_duplicates([str(p) for p in paths], wheres, "DICOM")
    return paths, labels, wheres


def check_folds(labels: Sequence[int], n_splits: int, where: str) -> None:
    """Refuse a fold count the labels cannot support (before any image is embedded), naming `--n-splits`.

    Every class needs at least `n_splits` members: with fewer, some held-out folds lack that class and their F1 is
    undefined (the mean becomes NaN), or the split fails outright.
    """
    if n_splits < 2:
        raise ValueError(f"--n-splits must be at least 2; got {n_splits}")
    counts = {label: sum(1 for y in labels if y == label) for label in (0, 1)}
    if min(counts.values()) == 0:
        raise ValueError(f"{where}: AUROC needs both classes; got {counts[1]} positives and {counts[0]} negatives")
    smallest = min(counts.values())
    if smallest < n_splits:
        raise ValueError(
            f"{where}: --n-splits {n_splits} needs at least {n_splits} studies of each class; there are "
            f"{counts[1]} positives and {counts[0]} negatives. Pass --n-splits {smallest} or fewer"
            + (" (at least 2)" if smallest < 2 else "")
            + "."
        )


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
    allow_absolute_paths: bool = False,
) -> dict[str, Any]:
    """RSNA pneumonia zero-shot: DICOMs through the reference's RSNA rule, score = softmax([cos_pos, cos_neg])[0]
    for "There is pneumonia" / "There is no pneumonia" (10 tokens, raw); AUROC, and ACC/F1 of the 10-fold threshold
    search (threshold chosen by `select_threshold_by`, "f1" as the reference does).

    The folds are checked before any image is embedded. Unreadable DICOMs are skipped, counted and listed; if the
    readable ones no longer support the folds, the results keep the AUROC and say why ACC/F1 are missing.
    """
    from evaluation.protocols import roc_auc, rsna_zero_shot_scores
    from processing.prompts import RSNA_NEGATIVE_PROMPT, RSNA_POSITIVE_PROMPT, RSNA_PROMPT_MAX_LENGTH

    if select_threshold_by not in ("f1", "accuracy"):
        raise ValueError(f"`select_threshold_by` must be 'f1' or 'accuracy'; got {select_threshold_by!r}")
    task = "rsna-zeroshot"
    paths, labels, wheres = read_rsna_list(list_path, data_root, labels_csv, allow_absolute_paths)
    check_folds(labels, n_splits, str(list_path))
    model, processor, out = prepare(model, processor, output_dir)
    image_embeds, kept, skipped = embed_readable_images(
        model, processor, paths, wheres, batch_size, dicom_rule="rsna", desc="RSNA DICOMs",
        source=f"--data-root {data_root}",
    )  # fmt: skip
    paths, labels = select(paths, kept), select(labels, kept)
    prompts = embed_texts(
        model,
        processor,
        [RSNA_POSITIVE_PROMPT, RSNA_NEGATIVE_PROMPT],
        normalize=False,
        max_length=RSNA_PROMPT_MAX_LENGTH,
        truncation=False,
    )
    scores = rsna_zero_shot_scores(image_embeds, prompts[0], prompts[1])
    try:
        check_folds(labels, n_splits, f"{list_path} after skipping {len(skipped)} unreadable DICOM(s)")
    except ValueError as err:
        if len(set(labels)) < 2:
            raise
        metrics = {"auroc": roc_auc(labels, scores), "accuracy": None, "f1": None, "fold_error": str(err)}
    else:
        metrics = load_metric("alta_rsna_zero_shot").compute(
            predictions=[float(s) for s in scores], references=labels, select_by=select_threshold_by, n_splits=n_splits
        )
    result = {
        "task": task,
        **metrics,
        "num_samples": len(labels),
        "num_positive": int(sum(labels)),
        **skip_report(skipped),
        "model": model_name(model),
    }
    embeddings = {
        "image_embeds": image_embeds,
        "positive_embed": prompts[0],
        "negative_embed": prompts[1],
        "rows": torch.tensor(kept),
    }
    figures = Figures(out, task, plots)
    first_positive = next((i for i, y in enumerate(labels) if y == 1), 0)

    def draw() -> None:
        figures.heatmap(model, processor, paths[first_positive], "pneumonia", dicom_rule="rsna")

    return finish_task(result, out, task, figures, embeddings if save_embeddings else None, draw)


def _run(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_rsna_zero_shot(
        model, args.list, args.data_root, args.labels_csv, select_threshold_by=args.select_threshold_by,
        n_splits=args.n_splits, save_embeddings=args.save_embeddings,
        allow_absolute_paths=args.allow_absolute_paths, **common,
    )  # fmt: skip


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--select-threshold-by",
        choices=("f1", "accuracy"),
        default="f1",
        help="metric maximised on the training folds (default f1, the reference's choice)",
    )
    parser.add_argument("--n-splits", type=int, default=10, help="stratified folds (10 in the reference)")


PROTOCOLS = (
    Protocol(
        name="rsna-zeroshot",
        summary="RSNA pneumonia zero-shot AUROC / ACC / F1 (DICOMs through the reference's RSNA rule)",
        inputs=(
            InputFile("--list", "test_list.txt: '<dicom path> <label>' per line, or only paths / patient ids"),
            InputFile(
                "--labels-csv",
                "stage_2_train_labels.csv, for a list without labels (a patient is positive if any row is)",
                ("patientId", "Target"),
                required=False,
            ),
        ),
        metrics=("auroc", "accuracy", "f1"),
        run=_run,
        add_arguments=_arguments,
        data_root_help="folder the list's paths are relative to (the reference's ./RSNA_dataset)",
        notes="Prompts 'There is pneumonia' / 'There is no pneumonia', 10 tokens, raw; the threshold of each fold "
        "is chosen by F1 on the other folds, as the reference does (--select-threshold-by accuracy to change it).",
    ),
)


__all__ = ["PROTOCOLS", "check_folds", "evaluate_rsna_zero_shot", "read_rsna_list"]
