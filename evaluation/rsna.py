"""RSNA pneumonia zero-shot (`rsna-zeroshot`): AUROC, and accuracy/F1 of the 10-fold threshold search.

RSNA quirk: the reference picks each fold's threshold by **F1** (in a variable named as if it were accuracy). That
is the default here too, so numbers are comparable; `--select-threshold-by accuracy` picks it by accuracy instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from inference.embedding import embed_images, embed_texts

from .readers import read_csv, require_columns, resolve_image
from .registry import InputFile, Protocol
from .results import Figures, finish_task, load_metric, model_name, prepare


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
        columns, rows = read_csv(labels_csv)
        require_columns(labels_csv, columns, ["patientId", "Target"])
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
        paths.append(resolve_image(data_root, name, where))
        labels.append(label)
    if not paths:
        raise ValueError(f"{list_path}: no entries")
    return paths, labels


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
    from evaluation.protocols import rsna_zero_shot_scores
    from processing.prompts import RSNA_NEGATIVE_PROMPT, RSNA_POSITIVE_PROMPT, RSNA_PROMPT_MAX_LENGTH

    if select_threshold_by not in ("f1", "accuracy"):
        raise ValueError(f"`select_threshold_by` must be 'f1' or 'accuracy'; got {select_threshold_by!r}")
    task = "rsna-zeroshot"
    model, processor, out = prepare(model, processor, output_dir)
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
    metrics = load_metric("alta_rsna_zero_shot").compute(
        predictions=[float(s) for s in scores], references=labels, select_by=select_threshold_by, n_splits=n_splits
    )
    figures = Figures(out, task, plots)
    first_positive = next((i for i, y in enumerate(labels) if y == 1), 0)
    figures.heatmap(model, processor, paths[first_positive], "pneumonia", dicom_rule="rsna")
    result = {
        "task": task,
        **metrics,
        "num_samples": len(labels),
        "num_positive": int(sum(labels)),
        "model": model_name(model),
    }
    embeddings = {"image_embeds": image_embeds, "positive_embed": prompts[0], "negative_embed": prompts[1]}
    return finish_task(result, out, task, figures, embeddings if save_embeddings else None)


def _run(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_rsna_zero_shot(
        model, args.list, args.data_root, args.labels_csv, select_threshold_by=args.select_threshold_by,
        n_splits=args.n_splits, save_embeddings=args.save_embeddings, **common,
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


__all__ = ["PROTOCOLS", "evaluate_rsna_zero_shot", "read_rsna_list"]
