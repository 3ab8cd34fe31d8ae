"""``datasets.Dataset`` builders for ALTA studies, and the lazy-decoding ``set_transform`` wiring.

Every builder returns a dataset with (at least) these columns, declared with explicit ``Features``::

    study_id: string | None        subject_id: string | None
    frontal, lateral, prior_frontal, prior_lateral: Image()   (None = missing view)
    report: string

Builders:
- :func:`dataset_from_reference_csv` - the reference ``train.csv`` (``"-1"`` = missing view);
- :func:`dataset_from_mimic` - a MIMIC-CXR-JPG download (rules in :mod:`processing.studies`);
- :func:`load_study_dataset` - any ``datasets`` dataset with those columns (a ``save_to_disk`` folder or a Hub id);
- :func:`dataset_from_rows` - study rows you assembled yourself.

Training decodes images lazily: :func:`set_study_transform` casts the view columns to ``Image(decode=False)`` and
installs a transform that opens each image inside ``try``. An unreadable image never raises: the sample comes back
with ``valid=False`` and ``error`` naming the view and file, so the collator can drop and count it.

Command line (writes a ``save_to_disk`` folder and/or the reference's ``train.csv``)::

    python -m processing.datasets mimic --root /data/mimic-cxr-jpg/2.0.0 --reports-root /data/mimic-cxr/2.0.0 \\
        --split train --out data/mimic-train --train-csv data/mimic-train/train.csv
    python -m processing.datasets csv --csv MIMIC-CXR_dataset/train.csv --image-root /path/to/ALTA --out data/ref
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image as PILImage

from modeling_alta.cxr_io_alta import load_image

from .studies import (
    ID_COLUMNS,
    REPORT_COLUMN,
    VIEW_COLUMNS,
    StudyTable,
    build_mimic_studies,
    read_reference_csv,
    write_reference_csv,
)


logger = logging.getLogger(__name__)

#: Extra string columns of MIMIC-built datasets.
MIMIC_EXTRA_COLUMNS: tuple[str, ...] = ("prior_study_id", "split")

#: The signature of the per-study callable given to :func:`make_study_transform` (the processor's job).
StudyFunction = Callable[[dict[str, PILImage.Image | None], str], Mapping[str, Any]]


def study_features(extra_columns: Sequence[str] = (), decode: bool = True, paths_only: bool = False):
    """The ``datasets.Features`` of a study dataset.

    Args:
        extra_columns: additional string columns (e.g. ``("prior_study_id", "split")``).
        decode: ``Image(decode=...)`` for the view columns.
        paths_only: declare the view columns as ``Value("string")`` paths instead of ``Image()`` (a small
            ``save_to_disk`` folder that references the JPEGs instead of embedding them; :func:`load_study_dataset`
            casts them back to ``Image()``).
    """
    from datasets import Features, Image, Value

    view = Value("string") if paths_only else Image(decode=decode)
    spec: dict[str, Any] = {name: Value("string") for name in ID_COLUMNS}
    spec.update({name: view for name in VIEW_COLUMNS})
    spec[REPORT_COLUMN] = Value("string")
    spec.update({name: Value("string") for name in extra_columns})
    return Features(spec)


def dataset_from_rows(
    rows: Iterable[Mapping[str, Any]] | StudyTable,
    extra_columns: Sequence[str] = (),
    paths_only: bool = False,
):
    """Build a study dataset from rows (absolute path or ``None`` per view, a report, optional ids).

    Raises:
        ValueError: a row lacks a column or has a relative path (``datasets`` would resolve it against the working
            directory at decode time, a silent dependence on where training is launched).
    """
    from datasets import Dataset

    if isinstance(rows, StudyTable):
        rows = rows.rows
    features = study_features(extra_columns, paths_only=paths_only)
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for index, row in enumerate(rows):
        for name in features:
            if name in VIEW_COLUMNS or name == REPORT_COLUMN:
                if name not in row:
                    raise ValueError(f"row {index} ({row.get('study_id')!r}) lacks the column {name!r}")
            value = row.get(name)
            if name in VIEW_COLUMNS and value is not None:
                value = os.fspath(value)
                if not os.path.isabs(value) and "://" not in value:
                    raise ValueError(
                        f"row {index} ({row.get('study_id')!r}), {name!r}: path {value!r} is not absolute"
                    )
            elif name not in VIEW_COLUMNS and value is not None:
                value = str(value)
            columns[name].append(value)
    return Dataset.from_dict(columns, features=features)


def dataset_from_reference_csv(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    missing_frontal: Literal["error", "skip"] = "error",
    check_files: bool = False,
    allow_absolute_paths: bool = False,
):
    """A study dataset from the reference ``train.csv`` layout.

    See :func:`processing.studies.read_reference_csv` for the arguments: relative paths resolve against
    ``image_root`` (default: the CSV's folder), ``"-1"`` or ``-1`` marks a missing view, and a row without a current
    frontal raises ``ValueError`` naming the line (``missing_frontal="error"``) or is skipped and counted
    (``"skip"``; the count is logged).
    """
    table = read_reference_csv(
        csv_path,
        image_root,
        missing_frontal=missing_frontal,
        check_files=check_files,
        allow_absolute_paths=allow_absolute_paths,
    )
    if table.skipped:
        logger.warning("%s: %s", csv_path, table.summary())
    return dataset_from_rows(table)


def dataset_from_mimic(
    root: str | Path,
    split: str | None = "train",
    metadata_csv: str | Path | None = None,
    split_csv: str | Path | None = None,
    reports_root: str | Path | None = None,
    sections: Sequence[str] = ("findings", "impression"),
    check_files: bool = True,
    paths_only: bool = False,
):
    """A study dataset from a MIMIC-CXR-JPG download (with ``prior_study_id`` and ``split`` columns).

    See :func:`processing.studies.build_mimic_studies` for the arguments and the view, prior and report rules.
    Skipped studies are counted and logged; call ``build_mimic_studies`` directly to get the counts.
    """
    table = build_mimic_studies(
        root,
        split=split,
        metadata_csv=metadata_csv,
        split_csv=split_csv,
        reports_root=reports_root,
        sections=sections,
        check_files=check_files,
    )
    logger.info("MIMIC-CXR: %s", table.summary())
    return dataset_from_rows(table, extra_columns=MIMIC_EXTRA_COLUMNS, paths_only=paths_only)


def validate_study_columns(dataset, source: str = "dataset"):
    """Check that ``dataset`` has the four view columns and ``report``; cast path-string view columns to ``Image()``.

    Returns:
        The dataset, with every view column an ``Image`` feature.

    Raises:
        ValueError: a column is missing or has an unusable type; the message lists what was found.
    """
    from datasets import Image, Value

    features = dataset.features
    required = [*VIEW_COLUMNS, REPORT_COLUMN]
    absent = [name for name in required if name not in features]
    if absent:
        raise ValueError(
            f"{source} lacks the study column(s) {absent}; found {list(features)}. A study dataset needs "
            f"{required} (views as Image() or path strings, None for a missing view)."
        )
    for name in VIEW_COLUMNS:
        feature = features[name]
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            dataset = dataset.cast_column(name, Image())
        elif isinstance(feature, Value) and feature.dtype == "null":
            # An all-None column written without features: every study lacks this view.
            dataset = dataset.cast_column(name, Image())
        elif not isinstance(feature, Image):
            raise ValueError(f"{source}: column {name!r} must be Image() or a path string, got {feature!r}")
    report = features[REPORT_COLUMN]
    if not (isinstance(report, Value) and report.dtype in ("string", "large_string")):
        raise ValueError(f"{source}: column {REPORT_COLUMN!r} must be a string, got {report!r}")
    return dataset


def load_study_dataset(path_or_id: str | Path, split: str | None = "train", **load_kwargs: Any):
    """Load a study dataset saved with ``save_to_disk`` (a local folder) or from the Hub (an id, online users).

    Args:
        path_or_id: a ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict``), or a Hub dataset id.
        split: the split to take from a ``DatasetDict`` or Hub dataset; ignored for a plain ``Dataset`` folder.
        load_kwargs: forwarded to ``datasets.load_dataset`` for Hub ids (e.g. ``revision``).

    Raises:
        ValueError: the dataset lacks the study columns, or ``split`` is not in a ``DatasetDict``.
    """
    import datasets

    source = os.fspath(path_or_id)
    if Path(source).expanduser().is_dir():
        loaded = datasets.load_from_disk(str(Path(source).expanduser()))
    else:
        loaded = datasets.load_dataset(source, split=split, **load_kwargs)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{source!r} has the splits {list(loaded)}, not {split!r}")
        loaded = loaded[split]
    return validate_study_columns(loaded, source=repr(source))


def save_study_dataset(dataset, out_dir: str | Path) -> Path:
    """``save_to_disk`` (image columns embed the JPEG bytes; path-string columns stay references)."""
    out_dir = Path(out_dir)
    dataset.save_to_disk(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------------------------------------------
# Lazy decoding
# --------------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return repr(value.get("path") or "<embedded bytes>")
    if isinstance(value, PILImage.Image):
        return "a PIL image"
    return repr(value)


def decode_view(value: Any, dicom_rule: str = "voi") -> PILImage.Image | None:
    """Decode one view cell into the working PIL image (mode "L", or "RGB" for colour) the image processor takes.

    Accepts an ``Image(decode=False)`` cell (``{"bytes", "path"}``), a path, bytes, a PIL image, an array or a pydicom
    dataset, or ``None`` (a missing view). PNG, JPEG and DICOM files all go through `cxr_io_alta.load_image`; the
    pixel data is read here, so a truncated file fails now, inside the caller's ``try``.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path is None:
            raise ValueError(f"an image cell needs 'bytes' or 'path'; got {dict(value)!r}")
        value = data if data is not None else path
    return load_image(value, dicom_rule=dicom_rule)


def decode_study(
    sample: Mapping[str, Any],
    views: Sequence[str] = VIEW_COLUMNS,
    required_views: Sequence[str] = ("frontal",),
    dicom_rule: str = "voi",
) -> tuple[dict[str, PILImage.Image | None], str | None]:
    """Decode the views of one study: the one place where an unreadable study becomes a skip with a reason.

    Returns:
        ``(images, None)`` with ``images = {view: PIL.Image | None}`` when every present view decodes and the
        `required_views` are present; else ``({}, error)`` with `error` naming the view, the file and the exception
        (e.g. ``"frontal: '/x/a.jpg': ValueError: ... corrupt or truncated image file ..."``).
    """
    images: dict[str, PILImage.Image | None] = {}
    for view in views:
        value = sample.get(view)
        try:
            images[view] = decode_view(value, dicom_rule)
        except Exception as exc:  # any decode failure marks the study, never the run
            return {}, f"{view}: {_describe(value)}: {type(exc).__name__}: {exc}"
    absent = [view for view in required_views if images.get(view) is None]
    if absent:
        return {}, f"{', '.join(absent)}: missing (required view)"
    return images, None


def make_study_transform(
    fn: StudyFunction | None = None,
    views: Sequence[str] = VIEW_COLUMNS,
    required_views: Sequence[str] = ("frontal",),
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """A batched ``set_transform`` function that decodes a study's images (`decode_study`) and applies ``fn``.

    - if the study decodes, ``fn(images, report)`` is called with ``images = {view: PIL.Image | None}`` and its
      dict is merged into the sample, with ``valid=True`` and ``error=None``. Without ``fn`` the decoded images
      and the report are returned as they are.
    - otherwise ``fn`` is **not** called; the sample has ``valid=False``, ``error`` (see `decode_study`), and
      ``None`` for the keys ``fn`` produced for the valid samples of the same batch (without ``fn``: ``None``
      images).

    Every other input column (``study_id``, ``subject_id``, ``split``...) passes through unchanged. Exceptions
    raised by ``fn`` itself are not caught: they are bugs, not bad data. `AltaPretrainingCollator` leaves invalid
    samples out of its batch and names them in the batch's ``skipped`` list.
    """
    views = tuple(views)
    missing_required = [v for v in required_views if v not in views]
    if missing_required:
        raise ValueError(f"required_views {missing_required} are not among the views {views}")

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = len(next(iter(batch.values()))) if batch else 0
        passthrough = {k: v for k, v in batch.items() if k not in views and k != REPORT_COLUMN}
        outputs: list[dict[str, Any] | None] = []
        errors: list[str | None] = []
        for i in range(size):
            sample = {view: batch[view][i] for view in views if view in batch}
            images, error = decode_study(sample, views, required_views)
            report = batch[REPORT_COLUMN][i] if REPORT_COLUMN in batch else None
            if error is not None:
                outputs.append(None)
            elif fn is None:
                outputs.append({**images, REPORT_COLUMN: report})
            else:
                result = fn(images, report)
                if not isinstance(result, Mapping):
                    raise TypeError(f"the study function must return a dict, got {type(result).__name__}")
                outputs.append(dict(result))
            errors.append(error)

        keys: list[str] = []
        if fn is None:
            keys = [*views, REPORT_COLUMN]
        for out in outputs:
            for key in out or ():
                if key not in keys:
                    keys.append(key)
        result_batch: dict[str, list[Any]] = {key: list(values) for key, values in passthrough.items()}
        for key in keys:
            result_batch[key] = [None if out is None else out.get(key) for out in outputs]
        result_batch["valid"] = [e is None for e in errors]
        result_batch["error"] = errors
        return result_batch

    return transform


def set_study_transform(dataset, fn: StudyFunction | None = None, **kwargs: Any):
    """Cast the view columns to ``Image(decode=False)`` and install :func:`make_study_transform` (in place).

    ``datasets`` would otherwise decode (and raise on) every image before the transform sees it. Returns the new
    dataset object (``cast_column`` makes a new one), with the transform set.
    """
    from datasets import Image

    dataset = validate_study_columns(dataset)
    for view in VIEW_COLUMNS:
        feature = dataset.features[view]
        if not (isinstance(feature, Image) and feature.decode is False):
            dataset = dataset.cast_column(view, Image(decode=False))
    dataset.set_transform(make_study_transform(fn, **kwargs))
    return dataset


def _item_bytes(item: Mapping[str, Any]) -> int:
    """Memory a decoded study holds: its images' pixels (one byte per band) and its strings."""
    size = 0
    for value in item.values():
        if isinstance(value, PILImage.Image):
            size += value.width * value.height * len(value.getbands())
        elif isinstance(value, str):
            size += len(value)
    return size


class IndexedStudies:
    """A study dataset for training: lazily decoded views (`set_study_transform`), each item carrying its row index
    under ``"index"``, the key of all the study's randomness in `AltaPretrainingCollator`. A `torch` map-style
    dataset (``len`` and integer indexing).

    A key may also be ``(epoch, index)`` (what `GlobalBatchSampler(..., with_epoch=True)` yields): the item then
    carries ``"epoch"`` too, so the collator keys the study's draws by the epoch it was sampled in even in a
    DataLoader worker that outlives the epoch (`persistent_workers`).

    Args:
        dataset: a `datasets.Dataset` with the view columns and ``report``.
        cache_mb (`float`, defaults to 0): keep decoded studies in memory, up to this many MiB of pixels, and serve
            them again in later epochs instead of reading and decoding their files (each process, and each
            DataLoader worker, holds its own cache). Decoding is deterministic and every later step (augmentation,
            resizing) makes new images, so training is bitwise the same with or without it; what it saves is the
            reading and decoding: about 1 ms of CPU per study in the demo, half of the loader's time. Studies are
            kept in the order first read until the budget is full, then the rest are decoded each time (logged
            once). Images are held at their stored size, so the budget goes furthest for data stored near the
            training resolution.
    """

    def __init__(self, dataset, cache_mb: float = 0.0) -> None:
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0; got {cache_mb}")
        self.dataset = set_study_transform(dataset)
        self.cache_budget = int(cache_mb * 2**20)
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0
        self._cache_full = False
        self.cache_hits = self.cache_misses = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def cache_info(self) -> dict[str, int]:
        """``{"studies", "bytes", "budget", "hits", "misses"}`` of this process's (or worker's) cache."""
        return {
            "studies": len(self._cache),
            "bytes": self._cached_bytes,
            "budget": self.cache_budget,
            "hits": self.cache_hits,
            "misses": self.cache_misses,
        }

    def _read(self, index: int) -> dict[str, Any]:
        if not self.cache_budget:
            return dict(self.dataset[index])
        cached = self._cache.get(index)
        if cached is not None:
            self.cache_hits += 1
            return dict(cached)
        self.cache_misses += 1
        item = dict(self.dataset[index])
        size = _item_bytes(item)
        if self._cached_bytes + size <= self.cache_budget:
            self._cache[index] = item
            self._cached_bytes += size
            return dict(item)
        if not self._cache_full:
            self._cache_full = True
            logger.info(
                "decoded-study cache full at %d studies (%.1f of %.1f MiB, pid %d): the other studies are decoded "
                "each time they are read",
                len(self._cache),
                self._cached_bytes / 2**20,
                self.cache_budget / 2**20,
                os.getpid(),
            )
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch = None
        if isinstance(key, tuple):
            if len(key) != 2:
                raise KeyError(f"a study key is an index or (epoch, index); got {key!r}")
            epoch, key = key
        item = self._read(int(key))
        item["index"] = int(key)
        if epoch is not None:
            item["epoch"] = int(epoch)
        return item


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processing.datasets",
        description="Build ALTA study datasets (save_to_disk folder and/or the reference train.csv).",
    )
    sub = parser.add_subparsers(dest="source", required=True)

    mimic = sub.add_parser("mimic", help="from a MIMIC-CXR-JPG download")
    mimic.add_argument("--root", required=True, help="MIMIC-CXR-JPG folder holding files/ and the metadata CSVs")
    mimic.add_argument("--reports-root", default=None, help="folder with files/pXX/pN/sN.txt (default: --root)")
    mimic.add_argument("--metadata-csv", default=None, help="default: ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]")
    mimic.add_argument("--split-csv", default=None, help="default: ROOT/mimic-cxr-2.0.0-split.csv[.gz]")
    mimic.add_argument("--split", default="train", choices=["train", "validate", "test", "all"])
    mimic.add_argument(
        "--sections", default="findings,impression", help="report sections, in order (findings,impression)"
    )
    mimic.add_argument("--no-check-files", action="store_true", help="do not drop images missing on disk")

    ref = sub.add_parser("csv", help="from the reference train.csv layout")
    ref.add_argument("--csv", required=True, help="the train.csv")
    ref.add_argument("--image-root", default=None, help="relative paths resolve here (default: the CSV's folder)")
    ref.add_argument("--skip-missing-frontal", action="store_true", help="skip rows without a frontal (else error)")
    ref.add_argument(
        "--allow-absolute-paths", action="store_true", help="accept absolute image paths (else: inside --image-root)"
    )

    for p in (mimic, ref):
        p.add_argument("--out", default=None, help="save_to_disk folder")
        p.add_argument(
            "--paths-only", action="store_true", help="store paths, not image bytes, in --out (small; not portable)"
        )
        p.add_argument("--train-csv", default=None, help="also write the reference's train.csv here")
        p.add_argument("--relative-to", default=None, help="write train.csv paths relative to this folder")
    return parser


def main(argv: Sequence[str] | None = None) -> StudyTable:
    """CLI entry point; returns the study table it built (for tests)."""
    args = _parser().parse_args(argv)
    if args.out is None and args.train_csv is None:
        raise SystemExit("nothing to write: pass --out and/or --train-csv")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extra: tuple[str, ...] = ()
    if args.source == "mimic":
        table = build_mimic_studies(
            args.root,
            split=None if args.split == "all" else args.split,
            metadata_csv=args.metadata_csv,
            split_csv=args.split_csv,
            reports_root=args.reports_root,
            sections=[s.strip() for s in args.sections.split(",") if s.strip()],
            check_files=not args.no_check_files,
        )
        extra = MIMIC_EXTRA_COLUMNS
    else:
        table = read_reference_csv(
            args.csv,
            args.image_root,
            missing_frontal="skip" if args.skip_missing_frontal else "error",
            allow_absolute_paths=args.allow_absolute_paths,
        )
    print(table.summary())
    if args.train_csv is not None:
        print(f"wrote {write_reference_csv(table, args.train_csv, relative_to=args.relative_to)}")
    if args.out is not None:
        dataset = dataset_from_rows(table, extra_columns=extra, paths_only=args.paths_only)
        print(f"wrote {save_study_dataset(dataset, args.out)} ({len(dataset)} studies)")
    return table


if __name__ == "__main__":
    main()
