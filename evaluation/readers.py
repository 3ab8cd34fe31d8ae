"""Readers shared by the benchmark modules: CSV files with named columns and image paths confined to a data root."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """`(column names, rows as dicts)` of a UTF-8 CSV file with a header line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"csv file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def require_columns(path: Any, columns: Sequence[str], required: Sequence[str]) -> None:
    """Raise naming the file, the missing columns and the columns it has."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {list(columns)}")


def resolve_image(data_root: str | os.PathLike | None, relative: str, where: str) -> Path:
    """The image file `relative` under `data_root`; `where` (file and row) is named in the errors."""
    if not relative or not relative.strip():
        raise ValueError(f"{where}: empty image path")
    path = Path(data_root or ".") / relative.strip()
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {relative!r} not found at {path}")
    return path


def is_positive(value: str, where: str) -> bool:
    """A CheXpert label cell is positive when it is 1 (blank means not mentioned)."""
    text = (value or "").strip()
    if text == "":
        return False  # blank CheXpert cells mean "not mentioned"
    try:
        return float(text) == 1.0
    except ValueError:
        raise ValueError(f"{where}: label value {value!r} is not a number") from None


__all__ = ["is_positive", "read_csv", "require_columns", "resolve_image"]
