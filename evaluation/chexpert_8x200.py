"""CheXpert 8x200 retrieval (ConVIRT's sets): text-to-image (`chexpert8x200-t2i`) and image-to-image
(`chexpert8x200-i2i`), P@5/10/50."""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.embedding import embed_images, embed_texts

from .readers import is_positive, read_csv, require_columns, resolve_image
from .registry import InputFile, Protocol
from .results import Figures, finish_task, model_name, precision_at_k_metric, prepare, usable_ks


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
        positive = [j for j, value in enumerate(row[5:]) if is_positive(value, f"{where} column {header[5 + j]!r}")]
        if len(positive) != 1:
            raise ValueError(
                f"{where}: a candidate needs exactly one positive label column; got {[header[5 + j] for j in positive]}"
            )
        paths.append(resolve_image(data_root, row[0], where))
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
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, [column, "Variable"])
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
            items.append(resolve_image(data_root, row[column], where))
        labels.append(CHEXPERT_8X200_LABELS[variable])
    if not rows:
        raise ValueError(f"{csv_path}: no query rows")
    return items, labels


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
    return _evaluate_8x200(
        "text", model, query_csv, candidate_csv, data_root, output_dir, processor, batch_size, ks, plots,
        save_embeddings,
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
    return _evaluate_8x200(
        "image", model, query_csv, candidate_csv, data_root, output_dir, processor, batch_size, ks, plots,
        save_embeddings,
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
) -> dict[str, Any]:
    """Both 8x200 tasks: queries of `kind` ("text" or "image") against the candidate images; P@K, the retrieval
    sheet, the optional embeddings file and the results JSON."""
    task = {"text": "chexpert8x200-t2i", "image": "chexpert8x200-i2i"}[kind]
    model, processor, out = prepare(model, processor, output_dir)
    queries, query_labels = read_chexpert_8x200_queries(query_csv, kind, data_root)
    paths, labels = read_chexpert_8x200_candidates(candidate_csv, data_root)
    ks = usable_ks(ks, len(paths), task)
    if kind == "text":
        query_embeds = embed_texts(
            model, processor, queries, batch_size, max_length=CHEXPERT_8X200_QUERY_LENGTH, truncation=False
        )
    else:
        query_embeds = embed_images(model, processor, queries, batch_size)
    image_embeds = embed_images(model, processor, paths, batch_size)
    metrics, top = precision_at_k_metric(query_embeds, image_embeds, query_labels, labels, ks)
    figures = Figures(out, task, plots)
    title = f"CheXpert 8x200 {kind}-to-image"
    figures.retrieval(processor, queries, paths, query_labels, labels, top, _names_8x200(), title)
    result = {"task": task, **metrics, "num_queries": len(queries), "num_candidates": len(paths)}
    result["model"] = model_name(model)
    embeddings = {"query_embeds": query_embeds, "candidate_embeds": image_embeds} if save_embeddings else None
    return finish_task(result, out, task, figures, embeddings)


def _run_text_to_image(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_8x200_text_to_image(
        model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings, **common
    )


def _run_image_to_image(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    return evaluate_chexpert_8x200_image_to_image(
        model, args.query_csv, args.candidate_csv, args.data_root, save_embeddings=args.save_embeddings, **common
    )


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
