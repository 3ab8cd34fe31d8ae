"""Checkpoints of `training/align.py`: `accelerate`'s `save_state` plus the trainer state, which marks completion.

A checkpoint is `OUTPUT/checkpoints/step-N/`: what `accelerator.save_state` writes (`model.safetensors`,
`optimizer.bin`, one `random_states_R.pkl` per process) and, written last and atomically (temp file, fsync, rename),
`trainer_state.json`: where the run stands, the settings an exact resume depends on, and a manifest of the other
files (size and sha256 of each). A folder without a valid `trainer_state.json` is incomplete (a crash or a full disk
during the save); a file that does not match the manifest is damaged; a checkpoint whose weights later gave a
non-finite loss gets `non_finite.json`. `--resume_from_checkpoint latest` takes the newest checkpoint that verifies
and logs each newer one it skipped and why; an explicit path that does not verify is refused, naming the file.

Resume is exact (the same losses and weights as an uninterrupted run) only with the same per-device batch size,
number of processes, gradient accumulation, seed and dataset, and with this process's random states; a resume that
would not be exact is refused, naming the setting or file, unless `--allow_inexact_resume`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from processing.atomic import atomic_write_text

from .arguments import AlignArguments


logger = logging.getLogger("alta.align")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
NON_FINITE_FILE = "non_finite.json"
MANIFEST_VERSION = 1
RNG_FILE = "random_states_{}.pkl"
INEXACT_FLAG = "--allow_inexact_resume"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, does not verify, or cannot be loaded; the message names the file."""


@dataclass
class TrainerState:
    """Where a run stands; saved last in each checkpoint (its presence marks the checkpoint complete).

    `skipped_studies` counts every study left out of a batch on any process, over the whole run (resumes
    included): a study that stays unreadable is counted once per epoch it is drawn. `settings` holds what an exact
    resume depends on (see `run_settings`).
    """

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    skipped_studies: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainerState:
        """The state of a `trainer_state.json`; fields of the wrong type are refused naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            expected = {"losses": list, "settings": dict}.get(f.name, int)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(f"{source}: field {f.name!r} must be {expected.__name__}; got {value!r}")
            kwargs[f.name] = value
        if "global_step" not in kwargs:
            raise ValueError(f"{source}: field 'global_step' is missing")
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Settings an exact resume depends on
# ---------------------------------------------------------------------------------------------------------------


def dataset_fingerprint(dataset) -> dict[str, Any]:
    """`{"studies": N, "sha256": ...}` over the study ids, image paths (and embedded image sizes) and reports.

    Content-based, so a dataset rebuilt identically keeps its fingerprint; image bytes are not read (only their
    lengths), so it takes a fraction of a second for a MIMIC-size dataset.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from processing.studies import ID_COLUMNS, REPORT_COLUMN, VIEW_COLUMNS

    columns = [c for c in (*ID_COLUMNS, *VIEW_COLUMNS, REPORT_COLUMN) if c in dataset.column_names]
    digest = hashlib.sha256(json.dumps(columns).encode())
    view = dataset.select_columns(columns).with_format("arrow")
    for batch in view.iter(batch_size=65536):
        for name in columns:
            column = batch.column(name)
            if pa.types.is_struct(column.type):
                values = [
                    pc.struct_field(column, "path").to_pylist(),
                    pc.binary_length(pc.struct_field(column, "bytes")).to_pylist(),
                ]
            else:
                values = column.to_pylist()
            digest.update(json.dumps(values, default=str).encode())
    return {"studies": len(dataset), "sha256": digest.hexdigest()}


def run_settings(args: AlignArguments, num_processes: int, dataset) -> dict[str, Any]:
    """What a resume must find unchanged to continue exactly (recorded in every checkpoint)."""
    return {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "num_processes": int(num_processes),
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
        "group_by_length": bool(getattr(args, "group_by_length", False)),
        "optim": getattr(args, "optim", "adamw_torch"),
        "dataset": dataset_fingerprint(dataset),
    }


# Settings recorded only by later versions, with the value every checkpoint without them was trained with.
_SETTINGS_BEFORE_RECORDED = {"optim": "adamw_torch"}


_SETTING_FLAGS = {
    "per_device_train_batch_size": "--per_device_train_batch_size",
    "num_processes": "the number of processes (accelerate launch --num_processes)",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "seed": "--seed",
    "group_by_length": "--group_by_length",
    "optim": "--optim",
    "dataset": "the training data (--dataset_path / --train_csv / --max_train_samples)",
}


def check_resume_settings(
    state: TrainerState, current: dict[str, Any], path: Path, allow_inexact: bool
) -> TrainerState:
    """Refuse (or, with `allow_inexact`, warn about) a resume whose settings differ from the checkpoint's.

    With `allow_inexact` and another global batch, the position in the epoch is converted so that about the same
    number of studies counts as done.
    """
    recorded = state.settings or {}
    if not recorded:
        logger.warning(
            "%s records no run settings (saved by an older version): cannot check that the batch size, processes, "
            "seed and dataset are unchanged; the resume is exact only if they are.",
            path / STATE_FILE,
        )
        return state
    recorded = {**_SETTINGS_BEFORE_RECORDED, **recorded}
    differences = [
        f"{_SETTING_FLAGS.get(key, key)}: checkpoint {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in current
        if key in recorded and recorded.get(key) != current.get(key)
    ]
    if not differences:
        return state
    message = f"resuming from {path} would not continue the run exactly: " + "; ".join(differences)
    if not allow_inexact:
        raise CheckpointError(
            f"{message}. Use the checkpoint's settings, or pass {INEXACT_FLAG} to continue anyway (different batches "
            "and random numbers from here on)."
        )
    logger.warning("%s; continuing anyway (%s)", message, INEXACT_FLAG)

    def studies_per_step(settings: dict[str, Any]) -> int:
        return (
            int(settings.get("per_device_train_batch_size", 1))
            * int(settings.get("num_processes", 1))
            * int(settings.get("gradient_accumulation_steps", 1))
        )

    before, after = studies_per_step(recorded), studies_per_step(current)
    if before != after:
        state.batch_in_epoch = state.batch_in_epoch * before // after
    state.settings = dict(current)
    return state


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_root(args: AlignArguments) -> Path:
    return Path(args.output_dir) / CHECKPOINT_DIR


def checkpoint_step(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_folders(args: AlignArguments) -> list[Path]:
    """Every `step-N` folder, complete or not, oldest first."""
    root = checkpoint_root(args)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step)


def complete_checkpoints(args: AlignArguments) -> list[Path]:
    """The checkpoint folders holding a trainer state, oldest first (not verified: see `verify_checkpoint`)."""
    return [p for p in checkpoint_folders(args) if (p / STATE_FILE).is_file()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in `folder` (except the trainer state itself)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (STATE_FILE, NON_FINITE_FILE) and not p.name.startswith(".")
    }


def _rotate(args: AlignArguments, saved: Path) -> None:
    """Keep the newest `--checkpoints_total_limit` checkpoints, and always the newest one before `saved`: its weights
    already gave a finite loss, which `saved`'s have not yet shown (see the NaN guard in align.py). Older
    incomplete folders (crashes during a save) go too."""
    limit = args.checkpoints_total_limit
    if not limit:
        return
    step = checkpoint_step(saved)
    complete = complete_checkpoints(args)
    keep = set(complete[-limit:])
    older = [p for p in complete if checkpoint_step(p) < step]
    if older:
        keep.add(older[-1])
    for folder in checkpoint_folders(args):
        if folder not in keep and checkpoint_step(folder) < step:
            shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(accelerator, state: TrainerState, args: AlignArguments) -> Path:
    """`save_state` into `checkpoints/step-N`, then the trainer state with the file manifest (atomically, last);
    rotate to `--checkpoints_total_limit`.

    Raises:
        CheckpointError: the save failed (e.g. the disk is full); the partial folder is removed and the message
            names it, the cause and the newest complete checkpoint.
    """
    path = checkpoint_root(args) / f"step-{state.global_step:08d}"
    try:
        if accelerator.is_main_process and path.exists():
            shutil.rmtree(path)  # an older run's folder of the same step: never half-overwritten under its marker
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()  # every process's random states are on disk before the manifest
        if accelerator.is_main_process:
            data = asdict(state)
            data["checkpoint"] = {
                "manifest_version": MANIFEST_VERSION,
                "num_processes": accelerator.num_processes,
                "files": file_manifest(path),
            }
            atomic_write_text(path / STATE_FILE, json.dumps(data, indent=1))
            _rotate(args, path)
    except OSError as err:
        if accelerator.is_main_process:
            shutil.rmtree(path, ignore_errors=True)
        newest = [p for p in complete_checkpoints(args) if p != path]
        where = f"; the newest complete checkpoint is {newest[-1]}" if newest else "; no complete checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {path}: {err}{where}") from err
    accelerator.wait_for_everyone()
    return path


def mark_non_finite(args: AlignArguments, from_step: int, reason: str) -> list[Path]:
    """Mark every complete checkpoint at step >= `from_step` as holding weights that gave a non-finite loss (so
    `latest` skips it); returns the marked folders. Call on the main process."""
    marked = []
    for folder in complete_checkpoints(args):
        if checkpoint_step(folder) >= from_step:
            atomic_write_text(folder / NON_FINITE_FILE, json.dumps({"reason": reason}, indent=1))
            marked.append(folder)
    return marked


# ---------------------------------------------------------------------------------------------------------------
# Verifying and resolving
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One reason a checkpoint does not verify; `kind` is "rng" for a random-state file, else "damaged"."""

    kind: str
    message: str


def _read_state(path: Path) -> tuple[TrainerState | None, dict[str, Any], list[Problem]]:
    marker = path / STATE_FILE
    if not marker.is_file():
        return None, {}, [Problem("damaged", f"{marker} is missing (the save did not complete)")]
    try:
        raw = marker.read_bytes()
        data = json.loads(raw.decode("utf-8"))
        state = TrainerState.from_dict(data, str(marker))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        size = marker.stat().st_size
        return None, {}, [Problem("damaged", f"{marker} is not valid JSON ({size} bytes): {err}")]
    except ValueError as err:
        return None, {}, [Problem("damaged", str(err))]
    info = data.get("checkpoint") if isinstance(data.get("checkpoint"), dict) else {}
    return state, info, []


def _check_rng_file(file: Path) -> str | None:
    """None if `file` holds random states accelerate can restore, else why not (loaded with `weights_only`)."""
    from accelerate.utils import load

    try:
        states = load(file)
    except Exception as err:  # unpicklable, truncated, or a payload weights_only refuses
        return f"{file} cannot be read: {type(err).__name__}: {err}"
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed") if k not in states]
    if missing:
        return f"{file} lacks the random states {missing}"
    return None


def verify_checkpoint(path: str | Path, process_index: int = 0, hash_files: bool = True) -> list[Problem]:
    """Why the checkpoint at `path` cannot be resumed from exactly (an empty list: it verifies).

    Checks the trainer state (present, valid JSON, typed fields), the non-finite mark, every file of the manifest
    (present, size, sha256 unless `hash_files=False`) and this process's random states. Checkpoints saved before
    manifests existed are checked for their files and readable weights only.
    """
    path = Path(path)
    if not path.is_dir():
        return [Problem("damaged", f"{path} is not a folder")]
    state, info, problems = _read_state(path)
    if problems:
        return problems
    flag = path / NON_FINITE_FILE
    if flag.is_file():
        try:
            reason = json.loads(flag.read_text()).get("reason", "")
        except (ValueError, AttributeError, OSError):
            reason = ""
        problems.append(Problem("damaged", f"{flag}: its weights gave a non-finite loss ({reason})"))
    files = info.get("files") if isinstance(info.get("files"), dict) else None
    rng_name = RNG_FILE.format(process_index)
    if files is not None:
        for name, meta in sorted(files.items()):
            file = path / name
            kind = "rng" if name.startswith("random_states_") else "damaged"
            if not file.is_file():
                problems.append(Problem(kind, f"{file} is missing"))
            elif not isinstance(meta, dict) or file.stat().st_size != meta.get("size"):
                problems.append(
                    Problem(kind, f"{file} has {file.stat().st_size} bytes; the checkpoint recorded {meta!r:.80}")
                )
            elif hash_files and _sha256(file) != meta.get("sha256"):
                problems.append(Problem(kind, f"{file} is damaged (its sha256 differs from the one recorded at save)"))
        if rng_name not in files:
            problems.append(
                Problem(
                    "rng",
                    f"{path / rng_name} is not part of this checkpoint (saved by {info.get('num_processes')} "
                    "processes)",
                )
            )
    else:
        weights = path / "model.safetensors"
        for name in ("model.safetensors", "optimizer.bin"):
            if not (path / name).is_file():
                problems.append(Problem("damaged", f"{path / name} is missing"))
        if weights.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(weights), framework="pt") as handle:
                    handle.keys()
            except Exception as err:
                problems.append(Problem("damaged", f"{weights} cannot be read: {type(err).__name__}: {err}"))
        if not (path / rng_name).is_file():
            problems.append(Problem("rng", f"{path / rng_name} is missing"))
    rng_file = path / rng_name
    if rng_file.is_file() and not any(p.kind == "rng" and str(rng_file) in p.message for p in problems):
        reason = _check_rng_file(rng_file)
        if reason:
            problems.append(Problem("rng", reason))
    return problems


def _accepted(problems: list[Problem], allow_inexact: bool) -> bool:
    return not problems or (allow_inexact and all(p.kind == "rng" for p in problems))


def resolve_checkpoint(spec: str, args: AlignArguments, process_index: int = 0) -> Path:
    """The folder `--resume_from_checkpoint` names: `latest` (the newest checkpoint that verifies; every newer one
    skipped is logged with its reasons) or a path (refused, naming the file, if it does not verify).

    Missing or damaged random states of this process make a checkpoint unusable for an exact resume; with
    `--allow_inexact_resume` such a checkpoint is accepted (with a warning) when nothing else is wrong.

    Raises:
        CheckpointError: no checkpoint verifies, or the named one does not.
    """
    allow_inexact = bool(getattr(args, "allow_inexact_resume", False))
    if spec == "latest":
        folders = checkpoint_folders(args)
        if not folders:
            raise CheckpointError(f"--resume_from_checkpoint latest: no checkpoint under {checkpoint_root(args)}")
        rejected = []
        for folder in reversed(folders):
            problems = verify_checkpoint(folder, process_index)
            if _accepted(problems, allow_inexact):
                for problem in problems:
                    logger.warning("resuming from %s despite: %s (%s)", folder, problem.message, INEXACT_FLAG)
                return folder
            logger.warning("skipping checkpoint %s: %s", folder, "; ".join(p.message for p in problems))
            rejected.append(f"{folder.name}: " + "; ".join(p.message for p in problems))
        hint = ""
        if any("random_states" in r for r in rejected) and not allow_inexact:
            hint = f" Pass {INEXACT_FLAG} to resume without the missing random states (not exactly)."
        raise CheckpointError(
            f"--resume_from_checkpoint latest: no checkpoint under {checkpoint_root(args)} verifies: "
            + " | ".join(rejected)
            + "."
            + hint
        )
    path = Path(spec)
    problems = verify_checkpoint(path, process_index)
    if not _accepted(problems, allow_inexact):
        hint = ""
        if all(p.kind == "rng" for p in problems):
            hint = f" Pass {INEXACT_FLAG} to resume with fresh random states (not exactly)."
        raise CheckpointError(
            f"--resume_from_checkpoint {spec}: the checkpoint does not verify: "
            + "; ".join(p.message for p in problems)
            + "."
            + hint
        )
    for problem in problems:
        logger.warning("resuming from %s despite: %s (%s)", path, problem.message, INEXACT_FLAG)
    return path


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """`load_state` from `path` and its trainer state; any failure names the checkpoint and the error."""
    state, _, problems = _read_state(path)
    if problems:
        raise CheckpointError("; ".join(p.message for p in problems))
    try:
        accelerator.load_state(str(path))
    except Exception as err:
        raise CheckpointError(f"could not load checkpoint {path}: {type(err).__name__}: {err}") from err
    return state


__all__ = [
    "CHECKPOINT_DIR",
    "INEXACT_FLAG",
    "NON_FINITE_FILE",
    "STATE_FILE",
    "CheckpointError",
    "Problem",
    "TrainerState",
    "check_resume_settings",
    "checkpoint_folders",
    "checkpoint_root",
    "checkpoint_step",
    "complete_checkpoints",
    "dataset_fingerprint",
    "file_manifest",
    "load_checkpoint",
    "mark_non_finite",
    "resolve_checkpoint",
    "run_settings",
    "save_checkpoint",
    "verify_checkpoint",
]
