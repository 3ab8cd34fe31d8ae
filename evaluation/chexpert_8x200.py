"""CheXpert 8x200 retrieval (ConVIRT's sets): text-to-image (`chexpert8x200-t2i`) and image-to-image
(`chexpert8x200-i2i`), P@5/10/50."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .readers import (
    input_columns,
    is_positive,
    read_csv,
    read_csv_rows,
    refuse_duplicates,
    require_columns,
    resolve_image,
)
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
CHEXPERT_8X200_QUERY_LENGTH = 20  # queries, padded, not truncated, no cleanup (datasets_text_retrieval.py)


def read_chexpert_8x200_candidates(
    csv_path: str | os.PathLike, data_root: str | os.PathLike | None = None, allow_absolute_paths: bool = False
) -> tuple[list[Path], list[int], list[str]]:
    """Read ConVIRT's 8x200 `candidate.csv`: the image path in column 0, CheXpert label columns from column 5 on.

    Returns:
        `(image paths, labels, row descriptions)`, a label being the position of the row's single positive among
        the label columns (No Finding 0, Cardiomegaly 2, ..., Fracture 12), as the reference computes it. Paths must
        stay inside `data_root`; an image listed twice is refused.
    """
    header, body = read_csv_rows(csv_path)
    body = [row for row in body if row]
    if not body:
        raise ValueError(f"{csv_path}: no candidate rows")
    if len(header) < 6:
        raise ValueError(f"{csv_path}: expected the path in column 0 and label columns from column 5; got {header}")
    paths, labels, wheres = [], [], []
    for i, row in enumerate(body):
        where = f"{csv_path} data row {i + 1}"
        positive = [j for j, value in enumerate(row[5:]) if is_positive(value, f"{where} column {header[5 + j]!r}")]
        if len(positive) != 1:
            raise ValueError(
                f"{where}: a candidate needs exactly one positive label column; got {[header[5 + j] for j in positive]}"
            )
        paths.append(resolve_image(data_root, row[0], where, allow_absolute_paths))
        labels.append(positive[0])
        wheres.append(where)
    refuse_duplicates([str(p) for p in paths], wheres, "candidate image")
    return paths, labels, wheres


def read_chexpert_8x200_queries(
    csv_path: str | os.PathLike,
    kind: str,
    data_root: str | os.PathLike | None = None,
    allow_absolute_paths: bool = False,
) -> tuple[list[Any], list[int], list[str]]:
    """Read ConVIRT's 8x200 `query.csv`: `Text` (kind `"text"`) or `Path` (kind `"image"`) and `Variable` (the class);
    the columns are those the registry declares for the task.

    Returns:
        `(texts or image paths, CheXpert label indices of CHEXPERT_8X200_LABELS, row descriptions)`.
    """
    task = {"text": "chexpert8x200-t2i", "image": "chexpert8x200-i2i"}.get(kind)
    if task is None:
        raise ValueError(f"`kind` must be 'text' or 'image'; got {kind!r}")
    column = "Text" if kind == "text" else "Path"
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, input_columns(task, "--query-csv"))
    items, labels, wheres = [], [], []
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
            items.append(resolve_image(data_root, row[column], where, allow_absolute_paths))
        labels.append(CHEXPERT_8X200_LABELS[variable])
        wheres.append(where)
    if not rows:
        raise ValueError(f"{csv_path}: no query rows")
    if kind == "image":
        refuse_duplicates([str(p) for p in items], wheres, "query image")
    return items, labels, wheres


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
    allow_absolute_paths: bool = False,
) -> dict[str, Any]:
    """CheXpert 8x200 text-to-image: `Text` queries (20 tokens, raw, not truncated) against the candidate images;
    relevant = same CheXpert label; P@5/10/50. Unreadable candidates are skipped, counted and listed."""
    return _evaluate_8x200(
        "text", model, query_csv, candidate_csv, data_root, output_dir, processor, batch_size, ks, plots,
        save_embeddings, allow_absolute_paths,
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
    allow_absolute_paths: bool = False,
) -> dict[str, Any]:
    """CheXpert 8x200 image-to-image: query images (`Path`, `Variable`) against the candidate images; P@5/10/50.
    Unreadable queries and candidates are skipped, counted and listed."""
    return _evaluate_8x200(
        "image", model, query_csv, candidate_csv, data_root, output_dir, processor, batch_size, ks, plots,
        save_embeddings, allow_absolute_paths,
    )  # fmt: skip


def _evaluate_8x200(
    kind: str,
    model: Any,
    query_csv: str | os.PathLike,
    candidate_csv: str | os.PathLike,
    data_root: str | os.PathLike | None,
    output_dir: str | os.PathLike | None,
    processor: Any,
    batch_size: int,
    ks: Sequence[int],
    plots: bool,
    save_embeddings: bool,
    allow_absolute_paths: bool,
) -> dict[str, Any]:
    """Both 8x200 tasks: queries of `kind` ("text" or "image") against the candidate images; P@K over the readable
    images, the retrieval sheet, the optional embeddings file and the results JSON."""
    task = {"text": "chexpert8x200-t2i", "image": "chexpert8x200-i2i"}[kind]
    queries, query_labels, query_wheres = read_chexpert_8x200_queries(query_csv, kind, data_root, allow_absolute_paths)
    paths, labels, wheres = read_chexpert_8x200_candidates(candidate_csv, data_root, allow_absolute_paths)
    model, processor, out = prepare(model, processor, output_dir)
    source = f"--data-root {data_root}"
    query_skipped: list[dict[str, str]] = []
    if kind == "text":
        query_embeds = embed_texts_with_progress(
            model, processor, queries, batch_size, desc="8x200 queries", max_length=CHEXPERT_8X200_QUERY_LENGTH,
            truncation=False,
        )  # fmt: skip
    else:
        query_embeds, query_kept, query_skipped = embed_readable_images(
            model, processor, queries, query_wheres, batch_size, desc="8x200 query images", source=source
        )
        queries, query_labels = select(queries, query_kept), select(query_labels, query_kept)
    image_embeds, kept, skipped = embed_readable_images(
        model, processor, paths, wheres, batch_size, desc="8x200 candidates", source=source
    )
    paths, labels = select(paths, kept), select(labels, kept)
    ks = usable_ks(ks, len(paths), task)
    metrics, top = precision_at_k_metric(query_embeds, image_embeds, query_labels, labels, ks)
    result = {"task": task, **metrics, "num_queries": len(queries), "num_candidates": len(paths)}
    result.update(skip_report(query_skipped, skipped))
    result["model"] = model_name(model)
    figures = Figures(out, task, plots)
    title = f"CheXpert 8x200 {kind}-to-image"

    def draw() -> None:
        figures.retrieval(processor, queries, paths, query_labels, labels, top, _names_8x200(), title)

    embeddings = {"query_embeds": query_embeds, "candidate_embeds": image_embeds} if save_embeddings else None
    return finish_task(result, out, task, figures, embeddings, draw)


def _run_text_to_image(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_8x200_text_to_image(
        model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings,
        allow_absolute_paths=args.allow_absolute_paths, **common,
    )  # fmt: skip


def _run_image_to_image(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_8x200_image_to_image(
        model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings,
        allow_absolute_paths=args.allow_absolute_paths, **common,
    )  # fmt: skip


_CANDIDATES = InputFile(
    "--candidate-csv",
    "candidate.csv: the image path in column 0, CheXpert label columns from column 5 on (one positive per row)",
)
_ROOT_HELP = "folder the csv's image paths are relative to (the reference's chexpert_root)"
PROTOCOLS = (
    Protocol(
        name="chexpert8x200-t2i",
        summary="CheXpert 8x200 text-to-image retrieval P@5/10/50",
        inputs=(InputFile("--query-csv", "text-retrieval/query.csv", ("Text", "Variable")), _CANDIDATES),
        metrics=("p@5", "p@10", "p@50"),
        run=_run_text_to_image,
        data_root_help=_ROOT_HELP,
        notes="Queries: 20 tokens, raw, not truncated; `Variable` is one of " + ", ".join(CHEXPERT_8X200_LABELS) + ".",
    ),
    Protocol(
        name="chexpert8x200-i2i",
        summary="CheXpert 8x200 image-to-image retrieval P@5/10/50",
        inputs=(InputFile("--query-csv", "image-retrieval/query.csv", ("Path", "Variable")), _CANDIDATES),
        metrics=("p@5", "p@10", "p@50"),
        run=_run_image_to_image,
        data_root_help=_ROOT_HELP,
    ),
)


__all__ = [
    "CHEXPERT_8X200_LABELS",
    "CHEXPERT_8X200_QUERY_LENGTH",
    "PROTOCOLS",
    "evaluate_chexpert_8x200_image_to_image",
    "evaluate_chexpert_8x200_text_to_image",
    "read_chexpert_8x200_candidates",
    "read_chexpert_8x200_queries",
]
