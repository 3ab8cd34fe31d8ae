"""`alta-embed`: embed an archive into a sharded embedding store, on one process or many, resumable.

An archive is a DICOM folder tree (grouped into studies by `processing.dicom_archive`, or embedded image by image),
a folder of PNG/JPEG files, a CSV in the reference `train.csv` layout, or a `datasets` dataset (a `save_to_disk`
folder or a Hub id). The output folder is an `EmbeddingStore` (`inference.store`) of L2-normalised float32
embeddings, one row per usable input, keyed by its id (StudyInstanceUID, SOPInstanceUID, the relative file path, the
CSV `study_id` or row, or the dataset's id column or row).

How a run is organised, and why:

1. **Inputs, once.** The main process lists the inputs (for DICOM: reads the headers; the result is cached in the
   output folder and reused while the file listing is unchanged) and writes them to `embed_items.json`; the other
   processes read that file, so every process sees the same ordered list. Ids must be unique.
2. **Parts.** The list is cut into parts of `--shard-size` inputs; part `k` is embedded by process `k % N` and
   written as one store shard, `part-<k>.safetensors`, atomically (temporary file, fsync, rename), with its ids, the
   inputs it had to skip and the run's fingerprint (inputs, model weights, settings) in its header.
3. **Resume.** A restarted run with the same command finds the parts already written (same fingerprint, same ids)
   and skips them: no input is embedded twice and a killed run loses at most the parts in flight. A different
   command on the same folder is refused (`--overwrite` starts over).
4. **Publication.** When every process is done, the main process checks that every input is in exactly one part
   (embedded or skipped), then publishes `index.json` atomically: before that moment the folder is not a store, after
   it the store is complete. Skipped inputs (unreadable files, bad studies) are listed in `skipped.json` with their
   reasons, together with what the DICOM grouping left out; the command exits non-zero when nothing was readable.

Decoding runs in DataLoader workers (`--num-workers`), in parallel with the model; `--bf16` runs the model under
bfloat16 autocast. On one machine::

    alta-embed --model path/to/alta --input /data/dicom --output /data/alta-store

On several GPUs or machines (the output folder on a shared filesystem)::

    accelerate launch --multi_gpu --num_processes 8 -m inference.embed_archive --model ... --input ... --output ...
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --num_processes 16 \\
        -m inference.embed_archive ...

On CPU processes add `--cpu` and launch with `--multi_gpu` (accelerate starts one process otherwise; see
configuration/accelerate/cpu_2proc.yaml).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modeling_alta.configuration_alta import STUDY_SLOTS
from modeling_alta.pipeline_alta import pooled_embeddings

from .embedding import progress_bar
from .store import (
    INDEX_FILE,
    SHARD_FORMAT,
    ShardFile,
    clear_store,
    publish_index,
    store_lock,
    write_json_atomic,
    write_shard,
)


logger = logging.getLogger("alta.embed")

RUN_FILE = "embed_run.json"
ITEMS_FILE = "embed_items.json"
SKIPPED_FILE = "skipped.json"
RUN_FORMAT = "alta-embed-run"
SOURCES = ("dicom", "images", "csv", "dataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PART = re.compile(r"^part-([0-9]+)\.safetensors$")
# A process whose first inputs all fail stops: something is systematically wrong (unit, root, missing pydicom).
FAIL_FAST_AFTER = 256
_LOGGED_FAILURES = 20


# ---------------------------------------------------------------------------------------------------------------
# 1. Inputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ArchiveInputs:
    """The ordered inputs of a run.

    Attributes:
        unit: `"image"` (single-frontal path) or `"study"` (multiview/temporal path).
        ids: one unique id per input.
        values: per input an image path, a study `{slot: path | None}`, or a dataset row number.
        unusable: what listing the archive left out, `{"what", "reason"}` (DICOM grouping, bad CSV rows, links).
        source: `{"kind", "path", ...}`, what was read.
    """

    unit: str
    ids: list[str]
    values: list[Any]
    unusable: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "ids": self.ids, "values": self.values, "unusable": self.unusable,
                "source": self.source}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchiveInputs:
        return cls(data["unit"], data["ids"], data["values"], data["unusable"], data["source"])


def detect_source(path: Path) -> str:
    """`csv` for a `.csv` file; `dataset` for a `save_to_disk` folder or a name that is not a local path;
    `images` for a folder holding PNG/JPEG files; `dicom` for any other folder."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{path}: a file input must be a reference-format .csv; got {path.suffix or 'no suffix'}")
    if not path.exists():
        return "dataset"  # a Hub id
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "dataset"
    for _, _, names in os.walk(path):
        if any(name.lower().endswith(IMAGE_SUFFIXES) for name in names):
            return "images"
    return "dicom"


def _walk_files(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    files, skipped = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in dirs:
            if (base / name).is_symlink():
                skipped.append({"what": str(base / name), "reason": "symbolic link to a folder (not followed)"})
        for name in names:
            path = base / name
            if path.is_symlink():
                skipped.append({"what": str(path), "reason": "symbolic link (not followed)"})
            elif path.is_file():
                files.append(path)
    return sorted(files), skipped


def listing_digest(root: Path) -> str:
    """A digest of a folder tree's file names, sizes and modification times (cheap: no file is opened)."""
    digest = hashlib.sha256()
    files, _ = _walk_files(root)
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def list_dicom_inputs(root: Path, unit: str, scan_workers: int = 1) -> ArchiveInputs:
    """A DICOM tree: studies (`StudyInstanceUID` ids, priors attached) or every usable image (`SOPInstanceUID`)."""
    from processing.dicom_archive import scan_dicom_archive

    archive = scan_dicom_archive(root, workers=scan_workers)
    unusable = [{"what": u.what, "reason": u.reason} for u in archive.unusable]
    source = {"kind": "dicom", "path": str(root), "summary": archive.summary()}
    if unit == "image":
        return ArchiveInputs(
            "image", [h.sop_instance_uid for h in archive.images], [h.path for h in archive.images], unusable, source
        )
    unusable += [{"what": u.what, "reason": f"left out of its study: {u.reason}"} for u in archive.unassigned]
    studies = archive.studies
    return ArchiveInputs("study", [s.study_instance_uid for s in studies], [s.as_study() for s in studies],
                         unusable, source)  # fmt: skip


def list_image_inputs(root: Path) -> ArchiveInputs:
    """A folder of PNG/JPEG files (recursively), ids = paths relative to the folder (POSIX separators)."""
    files, skipped = _walk_files(root)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ids = [p.relative_to(root).as_posix() for p in images]
    return ArchiveInputs("image", ids, [str(p.resolve()) for p in images], skipped,
                         {"kind": "images", "path": str(root)})  # fmt: skip


def list_csv_inputs(csv_path: Path, unit: str, image_root: Path | None = None) -> ArchiveInputs:
    """A CSV in the reference `train.csv` layout (`image_path`, `auxview_image_path`, `last_image_path`,
    `last_auxview_image_path`; `"-1"` = missing; the report column is not needed). Paths are resolved against
    `image_root` (default: the CSV's folder) and must stay inside it. Ids: `study_id` when the column is there and
    filled, else `row-<line>`."""
    from processing.studies import REFERENCE_CSV_COLUMNS, is_missing_view

    root = (image_root or csv_path.parent).resolve()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        wanted = [REFERENCE_CSV_COLUMNS["frontal"]] if unit == "image" else list(REFERENCE_CSV_COLUMNS.values())
        absent = [c for c in wanted if c not in columns]
        if absent:
            raise ValueError(f"{csv_path} lacks the column(s) {absent}; found {columns}")
        ids, values, unusable = [], [], []
        for line, record in enumerate(reader, start=2):
            row_id = (record.get("study_id") or "").strip() or f"row-{line}"
            views: dict[str, str | None] = {}
            problem = None
            for slot, column in REFERENCE_CSV_COLUMNS.items():
                if column not in wanted:
                    continue
                value = record.get(column)
                if is_missing_view(value):
                    views[slot] = None
                    continue
                path = Path(str(value).strip()).expanduser()
                path = (path if path.is_absolute() else root / path).resolve()
                if not path.is_relative_to(root):
                    problem = f"line {line}, {column}: {value!r} lies outside the image root {root}"
                    break
                views[slot] = str(path)
            if problem is None and views.get("frontal") is None:
                problem = f"line {line}: no frontal ({REFERENCE_CSV_COLUMNS['frontal']} is missing)"
            if problem is not None:
                unusable.append({"what": row_id, "reason": problem})
                continue
            ids.append(row_id)
            values.append(views["frontal"] if unit == "image" else {slot: views.get(slot) for slot in STUDY_SLOTS})
    return ArchiveInputs(unit, ids, values, unusable, {"kind": "csv", "path": str(csv_path), "image_root": str(root)})


def load_dataset_source(path: str, split: str | None):
    """A `datasets` dataset from a `save_to_disk` folder or a Hub id (one split)."""
    import datasets

    if Path(path).is_dir():
        loaded = datasets.load_from_disk(path)
    else:
        loaded = datasets.load_dataset(path, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path!r} has the splits {list(loaded)}; pass --split with one of them (got {split!r})")
        loaded = loaded[split]
    return loaded


def list_dataset_inputs(
    dataset, path: str, unit: str, image_column: str | None, id_column: str | None
) -> ArchiveInputs:
    """A `datasets` dataset: studies (all of `STUDY_SLOTS` are columns) or images (`image_column`, default
    `"image"`, or the `frontal` column of a study dataset). Ids from `id_column` (default `study_id`, then `id`),
    else the row number."""
    columns = list(dataset.column_names)
    if unit == "study" and not all(slot in columns for slot in STUDY_SLOTS):
        raise ValueError(f"--unit study needs the columns {list(STUDY_SLOTS)}; {path!r} has {columns}")
    if unit == "image":
        image_column = image_column or ("image" if "image" in columns else "frontal")
        if image_column not in columns:
            raise ValueError(f"{path!r} has no image column {image_column!r}; its columns are {columns}")
    id_column = id_column or next((c for c in ("study_id", "id") if c in columns), None)
    if id_column is not None and id_column not in columns:
        raise ValueError(f"{path!r} has no id column {id_column!r}; its columns are {columns}")
    ids = [str(v) for v in dataset[id_column]] if id_column else [str(i) for i in range(len(dataset))]
    source = {"kind": "dataset", "path": path, "fingerprint": getattr(dataset, "_fingerprint", None),
              "image_column": image_column, "id_column": id_column}  # fmt: skip
    return ArchiveInputs(unit, ids, list(range(len(dataset))), [], source)


def resolve_source_and_unit(args: argparse.Namespace) -> tuple[str, str]:
    """`--source` and `--unit` with `auto` resolved: images for a PNG/JPEG folder or an `--image-column`, studies
    otherwise (a dataset without the study columns is resolved to images once loaded)."""
    source = args.source if args.source != "auto" else detect_source(Path(args.input).expanduser())
    unit = args.unit
    if unit == "auto":
        unit = "image" if source == "images" or (source == "dataset" and args.image_column) else "study"
    return source, unit


def list_inputs(args: argparse.Namespace) -> ArchiveInputs:
    """The inputs of a run from the command-line arguments (see `build_parser`)."""
    path = Path(args.input).expanduser()
    source, unit = resolve_source_and_unit(args)
    if source in ("dicom", "images") and not path.is_dir():
        raise FileNotFoundError(f"--input {str(path)!r} is not a folder (source {source})")
    if source == "images" and unit != "image":
        raise ValueError("a folder of PNG/JPEG files holds images, not studies: use --unit image")
    if source == "dicom":
        inputs = list_dicom_inputs(path, unit, args.scan_workers)
    elif source == "images":
        inputs = list_image_inputs(path)
    elif source == "csv":
        inputs = list_csv_inputs(path, unit, Path(args.image_root).expanduser() if args.image_root else None)
    else:
        dataset = load_dataset_source(args.input, args.split)
        if args.unit == "auto" and not all(slot in dataset.column_names for slot in STUDY_SLOTS):
            unit = "image"
        inputs = list_dataset_inputs(dataset, args.input, unit, args.image_column, args.id_column)
    duplicates = sorted(i for i, n in Counter(inputs.ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"{args.input}: ids must be unique; repeated: {duplicates[:5]} (pass another --id-column)")
    if not inputs.ids:
        reasons = "; ".join(f"{u['what']}: {u['reason']}" for u in inputs.unusable[:5])
        raise ValueError(f"{args.input}: no usable input ({source}, unit {unit}){': ' + reasons if reasons else ''}")
    return inputs


# ---------------------------------------------------------------------------------------------------------------
# 2. Decoding (DataLoader workers)
# ---------------------------------------------------------------------------------------------------------------


class ArchiveDataset(torch.utils.data.Dataset):
    """Decodes one input per item in a DataLoader worker: `{"position", "pixel_values"[, "view_mask"]}` or
    `{"position", "error"}` for an input that cannot be read (never raises for bad data)."""

    def __init__(self, inputs: ArchiveInputs, positions: Sequence[int], image_processor: Any, dicom_rule: str | None,
                 dataset: Any = None) -> None:  # fmt: skip
        self.inputs = inputs
        self.positions = list(positions)
        self.image_processor = image_processor
        self.dicom_rule = dicom_rule
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.positions)

    def _value(self, position: int) -> Any:
        value = self.inputs.values[position]
        if self.dataset is None:
            return value
        from processing.datasets import decode_view

        row = self.dataset[int(value)]
        if self.inputs.unit == "study":
            return {slot: decode_view(row.get(slot)) for slot in STUDY_SLOTS}
        return decode_view(row[self.inputs.source["image_column"]])

    def __getitem__(self, index: int) -> dict[str, Any]:
        position = self.positions[index]
        try:
            value = self._value(position)
            kwargs = {"dicom_rule": self.dicom_rule} if self.dicom_rule else {}
            out = self.image_processor(images=[value], return_tensors="np", **kwargs)
        except Exception as err:  # any decode failure skips this input, never the run
            return {"position": position, "error": f"{type(err).__name__}: {err}"}
        item = {"position": position, "pixel_values": out["pixel_values"][0]}
        if "view_mask" in out:
            item["view_mask"] = out["view_mask"][0]
        return item


def collate_archive_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded inputs; failures travel as `(position, error)` pairs."""
    ok = [item for item in items if "error" not in item]
    batch: dict[str, Any] = {
        "positions": [item["position"] for item in items],
        "ok_positions": [item["position"] for item in ok],
        "errors": [(item["position"], item["error"]) for item in items if "error" in item],
    }
    if ok:
        batch["pixel_values"] = torch.from_numpy(np.stack([item["pixel_values"] for item in ok]))
        if "view_mask" in ok[0]:
            batch["view_mask"] = torch.from_numpy(np.stack([item["view_mask"] for item in ok]))
    return batch


# ---------------------------------------------------------------------------------------------------------------
# 3. The run: fingerprint, parts, resume
# ---------------------------------------------------------------------------------------------------------------


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's tensors (names, dtypes, bytes): a resumed run must use the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def files_digest(inputs: ArchiveInputs) -> str:
    """A digest of the size and modification time of every file the inputs name (no file is opened), so a resumed
    run notices a file that changed since the first attempt."""
    paths: set[str] = set()
    for value in inputs.values:
        if isinstance(value, str):
            paths.add(value)
        elif isinstance(value, dict):
            paths.update(v for v in value.values() if isinstance(v, str))
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def run_fingerprint(inputs: ArchiveInputs, weights: str, processor_config: dict[str, Any], settings: dict) -> str:
    """What the embeddings depend on: the ordered inputs (and their files' sizes and times), the weights, the image
    processor and the settings."""
    digest = hashlib.sha256()
    payload = {"unit": inputs.unit, "ids": inputs.ids, "values": inputs.values, "source": inputs.source.get("kind"),
               "dataset": inputs.source.get("fingerprint"), "image_column": inputs.source.get("image_column"),
               "files": files_digest(inputs)}  # fmt: skip
    for part in (payload, weights, processor_config, settings):
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def part_name(number: int) -> str:
    return f"part-{number:06d}.safetensors"


def part_ranges(count: int, shard_size: int) -> list[range]:
    return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def read_part(path: Path, fingerprint: str, expected_ids: Sequence[str]) -> tuple[ShardFile, list] | None:
    """A finished part of this run, or None: it must carry the run's fingerprint and account for exactly its inputs
    (embedded ids, then skipped ones) in order."""
    if not path.is_file():
        return None
    try:
        shard = ShardFile(path)
        if shard.metadata.get("format") != SHARD_FORMAT or shard.metadata.get("run") != fingerprint:
            return None
        skipped = json.loads(shard.metadata.get("skipped", "[]"))
        embedded = shard.ids()
    except (OSError, ValueError) as err:
        logger.warning("%s: not a finished part (%s); it is embedded again", path, err)
        return None
    accounted = set(embedded) | {s[0] for s in skipped}
    if len(embedded) + len(skipped) != len(expected_ids) or accounted != set(expected_ids):
        logger.warning("%s: holds other inputs than this part; it is embedded again", path)
        return None
    return shard, skipped


@dataclass
class RunStats:
    """What one process did; `steady_items` / `steady_seconds` time the inputs after the first batch (the rate once
    the workers and the model are warm)."""

    embedded: int = 0
    skipped: int = 0
    forward_calls: int = 0
    parts_written: int = 0
    parts_reused: int = 0
    steady_items: int = 0
    steady_seconds: float = 0.0

    COUNTS = ("embedded", "skipped", "forward_calls", "parts_written", "parts_reused")

    def as_tensor(self) -> torch.Tensor:
        rate = self.steady_items / self.steady_seconds if self.steady_seconds > 0 else 0.0
        return torch.tensor([*(float(getattr(self, k)) for k in self.COUNTS), rate], dtype=torch.float64)


def _prepare_folder(output: Path, inputs_json: dict[str, Any], manifest: dict[str, Any], overwrite: bool) -> None:
    """Main process: refuse a folder of another run (unless `overwrite`), clear it when asked, write the manifest
    and the input list."""
    output.mkdir(parents=True, exist_ok=True)
    run_path = output / RUN_FILE
    if run_path.is_file() and not overwrite:
        previous = json.loads(run_path.read_text())
        if previous.get("fingerprint") != manifest["fingerprint"]:
            changed = sorted(k for k in manifest if k != "fingerprint" and previous.get(k) != manifest[k])
            raise ValueError(
                f"{output} holds an alta-embed run with other inputs, weights or settings (differs in: "
                f"{changed or ['inputs or weights']}); pass --overwrite to start over, or another --output"
            )
    elif not run_path.is_file() and (output / INDEX_FILE).is_file() and not overwrite:
        raise ValueError(f"{output} already holds an embedding store not made by alta-embed; pass --overwrite")
    if overwrite:
        with store_lock(output):
            clear_store(output)
            for path in output.iterdir():  # parts of an unpublished run are listed by no index
                if _PART.match(path.name) and not path.is_symlink() and _is_embed_part(path):
                    path.unlink()
            for name in (RUN_FILE, ITEMS_FILE, SKIPPED_FILE):
                (output / name).unlink(missing_ok=True)
    write_json_atomic(output / ITEMS_FILE, inputs_json)
    write_json_atomic(run_path, manifest)


def _is_embed_part(path: Path) -> bool:
    try:
        shard = ShardFile(path)
    except (OSError, ValueError):
        return False
    return shard.is_store_shard and "run" in shard.metadata


def _cached_dicom_inputs(output: Path, args: argparse.Namespace) -> ArchiveInputs | None:
    """The DICOM scan of a previous attempt, when the archive's file listing has not changed since."""
    cached = output / ITEMS_FILE
    if args.overwrite or not cached.is_file():
        return None
    try:
        data = json.loads(cached.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    source, unit = resolve_source_and_unit(args)
    cached_source = data.get("source", {})
    if source != "dicom" or cached_source.get("kind") != "dicom" or data.get("unit") != unit:
        return None
    root = Path(args.input).expanduser()
    if cached_source.get("path") != str(root) or cached_source.get("listing") != listing_digest(root):
        return None
    logger.info("the DICOM archive's files have not changed since the last attempt: its grouping is reused")
    return ArchiveInputs.from_json(data)


# ---------------------------------------------------------------------------------------------------------------
# 4. Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alta-embed",
        description="Embed an archive (DICOM tree, PNG/JPEG folder, reference CSV or datasets dataset) into a "
        "sharded embedding store, on one process or many (accelerate launch), resumable.",
    )
    parser.add_argument("--model", required=True, help="an ALTA model folder (alta-convert, save_pretrained, align)")
    parser.add_argument("--input", required=True, help="DICOM folder, image folder, .csv file, dataset folder or id")
    parser.add_argument("--output", required=True, help="the store folder (created; a rerun resumes it)")
    parser.add_argument("--source", choices=("auto", *SOURCES), default="auto")
    parser.add_argument("--unit", choices=("auto", "study", "image"), default="auto",
                        help="embed studies (DICOM, CSV, study datasets: default) or single images")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=4096, help="inputs per part/shard (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=4, help="decoding workers per process (%(default)s)")
    parser.add_argument("--bf16", action="store_true",
                        help="run the model under bfloat16 autocast (on a CPU without native bf16 it runs fp32, with a "
                        "warning, unless --force-bf16)")  # fmt: skip
    parser.add_argument("--force-bf16", action="store_true", help="--bf16 even on a CPU that would emulate it (slow)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where CUDA is available")
    parser.add_argument("--dicom-rule", choices=("voi", "rsna"), default=None, help="DICOM to 8-bit rule")
    parser.add_argument("--image-root", default=None, help="CSV: the folder relative paths start from")
    parser.add_argument("--split", default="train", help="dataset: the split (default: %(default)s)")
    parser.add_argument("--image-column", default=None, help="dataset of images: the image column")
    parser.add_argument("--id-column", default=None, help="dataset: the id column (default study_id, then id)")
    parser.add_argument("--scan-workers", type=int, default=1, help="DICOM: processes reading headers")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous run in --output first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-fail-fast", dest="fail_fast", action="store_false",
                        help=f"go on even when a process's first {FAIL_FAST_AFTER} inputs all fail")  # fmt: skip
    parser.add_argument("--timeout-hours", type=float, default=24.0,
                        help="how long a process waits for the others at the end (%(default)s h)")  # fmt: skip
    return parser


def _accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Without cpu=True, a CPU launch of several processes would run independent single processes, silently.
    cpu = args.cpu or not torch.cuda.is_available()
    timeout = InitProcessGroupKwargs(timeout=timedelta(hours=args.timeout_hours))
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[timeout])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"the launcher started {launched} processes but the accelerator sees {accelerator.num_processes}; on CPU "
            "launch with `accelerate launch --multi_gpu --num_processes N ... --cpu`"
        )
    return accelerator


def load_image_model(folder: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The dual encoder (eval mode, on `device`) and the image processor of a model folder; no tokenizer needed."""
    from modeling_alta import AltaImageProcessor, AltaModel
    from modeling_alta.modeling_alta import unwrap_alta_model

    folder = Path(folder)
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not an ALTA model folder: {name} is missing")
    model = unwrap_alta_model(AltaModel.from_pretrained(folder), "dual_encoder").to(device).eval()
    return model, AltaImageProcessor.from_pretrained(folder)


def _broadcast(accelerator, value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value])[0]


@torch.no_grad()
def embed_parts(
    accelerator, model, inputs: ArchiveInputs, parts: list[range], numbers: list[int], output: Path,
    fingerprint: str, args: argparse.Namespace, image_processor: Any, dataset: Any, stats: RunStats,
) -> None:  # fmt: skip
    """Embed the given parts in order and write each one as soon as its last input is done."""
    positions = [p for number in numbers for p in parts[number]]
    loader = torch.utils.data.DataLoader(
        ArchiveDataset(inputs, positions, image_processor, args.dicom_rule, dataset),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=collate_archive_batch,
        pin_memory=accelerator.device.type == "cuda",
        prefetch_factor=4 if args.num_workers > 0 else None,
    )
    device = accelerator.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    dim = int(model.config.projection_dim)
    queue = list(numbers)
    current: dict[str, Any] = {"embeds": [], "ids": [], "skipped": [], "done": 0}
    logged = 0
    seen = 0
    first_errors: list[tuple[str, str]] = []
    with progress_bar(
        len(positions),
        {"image": "alta-embed (images)", "study": "alta-embed (studies)"}[inputs.unit],
        inputs.unit,
        not args.no_progress,
    ) as bar:
        started = None
        for batch in loader:
            if started is None:
                started = time.perf_counter()
            else:
                stats.steady_items += len(batch["positions"])
            embeds = None
            if batch["ok_positions"]:
                pixels = batch["pixel_values"].to(device, non_blocking=True)
                view_mask = batch.get("view_mask")
                with torch.inference_mode(), autocast:
                    out = model.get_image_features(
                        pixels, view_mask=view_mask.to(device) if view_mask is not None else None, return_dict=True
                    )
                embeds = F.normalize(pooled_embeddings(out).float(), dim=-1).cpu()
                stats.forward_calls += 1
            rows = dict(zip(batch["ok_positions"], range(len(batch["ok_positions"]))))
            errors = dict(batch["errors"])
            for position in batch["positions"]:
                seen += 1
                if position in errors:
                    current["skipped"].append([inputs.ids[position], errors[position]])
                    stats.skipped += 1
                    if len(first_errors) < 3:
                        first_errors.append((inputs.ids[position], errors[position]))
                    if logged < _LOGGED_FAILURES:
                        logger.warning("skipped %s: %s", inputs.ids[position], errors[position])
                        logged += 1
                else:
                    current["embeds"].append(embeds[rows[position]])
                    current["ids"].append(inputs.ids[position])
                    stats.embedded += 1
                current["done"] += 1
                if current["done"] == len(parts[queue[0]]):
                    _write_part(output, queue.pop(0), current, dim, fingerprint)
                    stats.parts_written += 1
                    current = {"embeds": [], "ids": [], "skipped": [], "done": 0}
            if args.fail_fast and stats.embedded == 0 and seen >= min(FAIL_FAST_AFTER, len(positions)):
                reasons = "; ".join(f"{i}: {r}" for i, r in first_errors)
                raise RuntimeError(
                    f"process {accelerator.process_index}: the first {seen} inputs all failed ({reasons}); check "
                    "--unit, --source and the DICOM extra, or pass --no-fail-fast to go on (finished parts are kept)"
                )
            bar.update(len(batch["positions"]))
            bar.set_postfix(skipped=stats.skipped, refresh=False)
    if started is not None:
        stats.steady_seconds = time.perf_counter() - started
    if stats.skipped > logged:
        logger.warning("process %d skipped %d inputs in all; see %s", accelerator.process_index, stats.skipped,
                       output / SKIPPED_FILE)  # fmt: skip


def _write_part(output: Path, number: int, current: dict[str, Any], dim: int, fingerprint: str) -> None:
    embeds = torch.stack(current["embeds"]) if current["embeds"] else torch.empty(0, dim)
    metadata = {"run": fingerprint, "part": str(number), "skipped": json.dumps(current["skipped"])}
    write_shard(output / part_name(number), embeds, current["ids"], metadata)


def publish(output: Path, inputs: ArchiveInputs, parts: list[range], fingerprint: str, dim: int) -> dict[str, Any]:
    """Main process, after every process is done: check every input is in exactly one part, then publish the index
    and the list of skipped inputs (atomically)."""
    entries, skipped, seen = [], [], set()
    for number, part in enumerate(parts):
        expected = [inputs.ids[p] for p in part]
        found = read_part(output / part_name(number), fingerprint, expected)
        if found is None:
            raise RuntimeError(f"{output / part_name(number)}: part {number} is missing or incomplete; run again")
        shard, part_skipped = found
        ids = shard.ids()
        if seen & set(ids):
            raise RuntimeError(
                f"{output / part_name(number)}: ids also in an earlier part: {sorted(seen & set(ids))[:5]}"
            )
        seen.update(ids)
        entries.append({"file": part_name(number), "count": shard.count})
        skipped += [{"id": i, "reason": r} for i, r in part_skipped]
    if len(seen) + len(skipped) != len(inputs.ids):
        raise RuntimeError(f"{output}: {len(seen)} embedded + {len(skipped)} skipped != {len(inputs.ids)} inputs")
    report = {"inputs": skipped, "archive": inputs.unusable}
    write_json_atomic(output / SKIPPED_FILE, report)
    with store_lock(output):
        publish_index(output, entries, dim, torch.float32)
    return {"embedded": len(seen), "skipped_inputs": len(skipped), "unusable_in_archive": len(inputs.unusable)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`alta-embed` (see the module docstring); returns (and prints, on the main process) a summary."""
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accelerator = _accelerator(args)
    if args.bf16 and accelerator.device.type == "cpu":
        from .precision import cpu_precision

        # Emulated bf16 is several times slower than fp32: warn and run fp32 unless forced (what ran is recorded).
        args.bf16 = cpu_precision("bf16", args.force_bf16, "--force-bf16") == "bf16"
    output = Path(args.output).expanduser()
    model, image_processor = load_image_model(args.model, accelerator.device)

    # 1. Inputs and the run's fingerprint, on the main process; the others read them.
    payload = None
    if accelerator.is_main_process:
        inputs = None
        if args.source in ("auto", "dicom") and Path(args.input).expanduser().is_dir():
            inputs = _cached_dicom_inputs(output, args)
        if inputs is None:
            inputs = list_inputs(args)
            if inputs.source.get("kind") == "dicom":
                inputs.source["listing"] = listing_digest(Path(args.input).expanduser())
        settings = {"shard_size": args.shard_size, "bf16": args.bf16, "dicom_rule": args.dicom_rule}
        fingerprint = run_fingerprint(inputs, model_digest(model), image_processor.to_dict(), settings)
        manifest = {"format": RUN_FORMAT, "version": 1, "fingerprint": fingerprint, "num_items": len(inputs.ids),
                    "unit": inputs.unit, "source": inputs.source.get("kind"), "input": str(args.input),
                    "model": str(args.model), **settings}  # fmt: skip
        _prepare_folder(output, inputs.to_json(), manifest, args.overwrite)
        payload = fingerprint
    fingerprint = _broadcast(accelerator, payload)
    if not accelerator.is_main_process:
        inputs = ArchiveInputs.from_json(json.loads((output / ITEMS_FILE).read_text()))
    dataset = None
    if inputs.source.get("kind") == "dataset":
        dataset = load_dataset_source(inputs.source["path"], args.split)

    # 2. This process's parts, skipping the ones a previous attempt finished.
    parts = part_ranges(len(inputs.ids), args.shard_size)
    stats = RunStats()
    mine = list(range(accelerator.process_index, len(parts), accelerator.num_processes))
    todo = []
    for number in mine:
        if read_part(output / part_name(number), fingerprint, [inputs.ids[p] for p in parts[number]]) is not None:
            stats.parts_reused += 1
        else:
            todo.append(number)
    if stats.parts_reused and accelerator.is_main_process:
        logger.info("resuming: %d finished part(s) of this process are kept", stats.parts_reused)
    if todo:
        embed_parts(
            accelerator, model, inputs, parts, todo, output, fingerprint, args, image_processor, dataset, stats
        )

    # 3. Everyone done: the main process checks and publishes.
    totals = stats.as_tensor()
    if accelerator.num_processes > 1:
        # float64 sums are exact for these counts; the processes' steady rates add up
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    accelerator.wait_for_everyone()
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        summary = publish(output, inputs, parts, fingerprint, int(model.config.projection_dim))
        counts = [int(v) for v in totals[:-1].tolist()]
        names = ("embedded_this_run", "skipped_this_run", "forward_calls", "parts_written", "parts_reused")
        summary.update(zip(names, counts))
        summary["inputs_per_second"] = round(float(totals[-1]), 3)
        summary.update({"processes": accelerator.num_processes, "parts": len(parts), "store": str(output)})
        print("alta-embed summary: " + json.dumps(summary), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if summary and summary["embedded"] == 0:
        raise SystemExit(f"alta-embed: no input could be read; the reasons are in {output / SKIPPED_FILE}")
    return summary


def cli() -> None:
    """Console entry point."""
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"alta-embed: {err}") from err


if __name__ == "__main__":
    cli()


__all__ = [
    "ArchiveDataset",
    "ArchiveInputs",
    "build_parser",
    "collate_archive_batch",
    "detect_source",
    "list_csv_inputs",
    "list_dataset_inputs",
    "list_dicom_inputs",
    "list_image_inputs",
    "list_inputs",
    "main",
    "publish",
    "read_part",
    "run_fingerprint",
]
