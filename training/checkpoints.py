"""Checkpoints of `training/align.py`: `accelerate`'s `save_state` plus the trainer state, which marks completion."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .arguments import AlignArguments


CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where a run stands; saved last in each checkpoint (its presence marks the checkpoint complete)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    skipped_studies: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)


def checkpoint_root(args: AlignArguments) -> Path:
    return Path(args.output_dir) / CHECKPOINT_DIR


def complete_checkpoints(args: AlignArguments) -> list[Path]:
    """The checkpoint folders holding a trainer state, oldest first."""
    return sorted(p for p in checkpoint_root(args).glob("step-*") if (p / STATE_FILE).is_file())


def save_checkpoint(accelerator, state: TrainerState, args: AlignArguments) -> Path:
    """`save_state` into `checkpoints/step-N`, then the trainer state; rotate to `--checkpoints_total_limit`."""
    path = checkpoint_root(args) / f"step-{state.global_step:08d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if args.checkpoints_total_limit:
            for old in complete_checkpoints(args)[: -args.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def resolve_checkpoint(spec: str, args: AlignArguments) -> Path:
    """The folder `--resume_from_checkpoint` names: `latest` or a path."""
    if spec == "latest":
        candidates = complete_checkpoints(args)
        if not candidates:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {checkpoint_root(args)}")
        return candidates[-1]
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {spec}: not a checkpoint folder (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """`load_state` from `path` and its trainer state."""
    accelerator.load_state(str(path))
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "TrainerState",
    "checkpoint_root",
    "complete_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
