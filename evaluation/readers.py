"""Readers shared by the benchmark modules: CSV files with named columns and image paths confined to a data root.

Every error names the file (and the row or line). Image paths in the input files are relative to `--data-root` and
must stay inside it (a `..` that climbs out is refused); absolute paths are refused unless the caller allows them
(`--allow-absolute-paths`). Whether an image exists and decodes is not checked here: evaluation skips, counts and
reports unreadable images (`evaluation.results.embed_readable_images`) instead of stopping.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`; a missing, unreadable or non-UTF-8 file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM written by spreadsheet programs is not part of the header
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: not UTF-8 text (byte {err.start}, line {line}: {data[err.start : err.start + 4]!r}); save it as "
            "UTF-8"
        ) from None


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """`(header, rows)` of a UTF-8 CSV file; an empty file or a malformed row raises naming the file."""
    text = read_text_file(path, "csv file")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV: {err}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ValueError(f"{path}: empty CSV file (no header line)")
    return rows[0], rows[1:]


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """`(column names, rows as dicts)` of a UTF-8 CSV file with a header line."""
    header, body = read_csv_rows(path)
    duplicated = sorted({c for c in header if header.count(c) > 1 and c})
    if duplicated:
        raise ValueError(f"{path}: the header names column(s) {duplicated} more than once")
    rows = []
    for number, values in enumerate(body, start=1):
        if not values:
            continue
        if len(values) > len(header):
            raise ValueError(f"{path} data row {number}: {len(values)} fields, the header has {len(header)}")
        rows.append({name: (values[i] if i < len(values) else "") for i, name in enumerate(header)})
    return header, rows


def require_columns(path: Any, columns: Sequence[str], required: Sequence[str]) -> None:
    """Raise naming the file, the missing columns and the columns it has."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {list(columns)}")


def input_columns(task: str, flag: str) -> tuple[str, ...]:
    """The columns the registry declares for the input file `flag` of `task` (the one place they are stated)."""
    from .registry import get_protocol

    for item in get_protocol(task).inputs:
        if item.flag == flag:
            return item.columns
    raise ValueError(f"task {task!r} has no input {flag!r}")


def resolve_image(
    data_root: str | os.PathLike | None, relative: str, where: str, allow_absolute: bool = False
) -> Path:
    """The image file `relative` under `data_root`, confined to it; `where` (file and row) is named in the errors.

    Raises:
        ValueError: an empty path, an absolute path (unless `allow_absolute`), or a relative path that leaves
            `data_root` (e.g. `../../etc/passwd`).
    """
    text = (relative or "").strip()
    if not text:
        raise ValueError(f"{where}: empty image path")
    root = Path(data_root or ".")
    path = Path(text).expanduser()
    if path.is_absolute():
        if not allow_absolute:
            raise ValueError(
                f"{where}: image path {text!r} is absolute; paths must be relative to --data-root ({root}). Pass "
                "--allow-absolute-paths (allow_absolute_paths=True) to accept absolute paths."
            )
        return path
    base = os.path.abspath(root)
    joined = os.path.normpath(os.path.join(base, text))
    if os.path.commonpath([base, joined]) != base:
        raise ValueError(f"{where}: image path {text!r} leaves --data-root ({root}); it resolves to {joined}")
    return Path(joined)


def refuse_duplicates(values: Sequence[Any], wheres: Sequence[str], what: str) -> None:
    """Raise naming both rows when a value (an image path, a study id) occurs twice."""
    first: dict[Any, str] = {}
    for value, where in zip(values, wheres):
        if value in first:
            raise ValueError(f"duplicate {what} {str(value)!r}: {first[value]} and {where}")
        first[value] = where


def is_positive(value: str, where: str) -> bool:
    """A CheXpert label cell is positive when it is 1 (blank means not mentioned)."""
    text = (value or "").strip()
    if text == "":
        return False  # blank CheXpert cells mean "not mentioned"
    try:
        return float(text) == 1.0
    except ValueError:
        raise ValueError(f"{where}: label value {value!r} is not a number") from None


__all__ = [
    "input_columns",
    "is_positive",
    "read_csv",
    "read_csv_rows",
    "read_text_file",
    "refuse_duplicates",
    "require_columns",
    "resolve_image",
]
