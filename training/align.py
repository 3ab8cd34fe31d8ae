"""Align ALTA's adapters on your studies.

    accelerate launch training/align.py --config configuration/recipes/align-mimic-cxr.yaml
    python training/align.py --config FILE --output_dir runs/x          # one process, no launcher
    accelerate launch --multi_gpu --num_processes 2 training/align.py --config FILE --cpu   # two CPU processes

Also callable as `training.align.main(argv)`. Every field of `training/arguments.py` can be set in the YAML/JSON
config and overridden on the command line.

Reproducibility: the data order (per epoch), the augmentation, the MLM masking and the patch-masking noise of every
study derive from `(seed, epoch, study index)` alone, so a run gives the same batches whatever the number of
processes (the concatenation of the processes' batches is the one-process batch) and a resumed run continues
exactly where an uninterrupted one would be. Dropout is the only draw from the global RNG, whose state
`save_state` stores.

Faults (see training/checkpoints.py and training/signals.py): an unreadable study is skipped, counted on every
process and named once (the counts survive resumes); batches are skipped on every process together, so the
processes stay in step; a run that finds no readable study for `--max_consecutive_skipped_batches` batches stops,
naming the image root and a failing path. Ctrl-C or SIGTERM stops after the current step, saves a checkpoint and
exits 130 / 143 (a second signal exits at once); processes exit when their launcher dies. A non-finite loss or
non-finite parameters stop the run; the checkpoints whose weights led there are marked so that `latest` skips them.
`OUTPUT/model/` is written to a staging folder and renamed into place.

The script reads top to bottom: arguments (1), set-up (2), resume (3), one optimizer step (4), the loop with its
logging, validation and checkpoints (5), and the end of the run with the export (6).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # `python training/align.py` / `accelerate launch training/align.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before torch loads the OpenMP runtime: idle threads sleep instead of spinning (training/threads.py).
import training.openmp_defaults  # noqa: F401, I001

import torch

from modeling_alta.modeling_alta import unwrap_alta_model
from training.arguments import AlignArguments, DataArguments, ModelArguments
from training.build import build_accelerator, build_model, build_optimizer, learning_rate_at, trackers
from training.checkpoints import (
    NON_FINITE_FILE,
    TrainerState,
    check_resume_settings,
    checkpoint_step,
    complete_checkpoints,
    load_checkpoint,
    mark_non_finite,
    resolve_checkpoint,
    run_settings,
    save_checkpoint,
)
from training.data import build_dataloader, load_train_dataset
from training.losses import AltaPretrainingLoss
from training.notices import StudyNotices
from training.signals import InterruptMonitor, exit_with_launcher


logger = logging.getLogger("alta.align")


# ---------------------------------------------------------------------------------------------------------------
# 1. Arguments
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, AlignArguments]:
    """`--config FILE` (or a lone .yaml/.json argument) gives the defaults; other flags override them."""
    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    config: dict[str, Any] = {}
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = ["--config", argv[0]]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a file path")
        path = Path(argv[i + 1])
        if not path.is_file():
            raise FileNotFoundError(f"--config file not found: {path}")
        text = path.read_text()
        config = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        argv = argv[:i] + argv[i + 2 :]
    parser = HfArgumentParser((ModelArguments, DataArguments, AlignArguments))
    known = {f for dc in parser.dataclass_types for f in dc.__dataclass_fields__}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"Unknown keys in the config file: {unknown}")
    parser.set_defaults(**config)
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, args


# ---------------------------------------------------------------------------------------------------------------
# 2. Set-up: everything the loop needs, built once
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The state of one `align.py` run, shared by the steps below."""

    model_args: ModelArguments
    data_args: DataArguments
    args: AlignArguments
    accelerator: Any
    model: Any  # as prepared by accelerate (DDP around it on several processes; a PeftModel for lora/ia3)
    alta: Any  # the AltaForPreTraining inside
    processor: Any
    loader: Any
    sampler: Any
    collator: Any
    optimizer: torch.optim.Optimizer
    loss_fn: AltaPretrainingLoss
    peak_lr: float
    warmup: float
    total: float
    max_steps: int
    counts: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    trainable: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)
    state: TrainerState = field(default_factory=TrainerState)
    metrics: dict[str, Any] = field(default_factory=dict)
    skips: StudyNotices = field(default_factory=lambda: StudyNotices("skipping unreadable study", logger))
    truncations: StudyNotices = field(
        default_factory=lambda: StudyNotices("report truncated to --max_length tokens", logger)
    )
    monitor: InterruptMonitor | None = None
    consecutive_skipped: int = 0  # micro-batches skipped in a row (on every process)
    studies_left_out: int = 0  # studies (all processes) in those batches
    epoch_readable: int = 0
    epoch_left_out: int = 0
    last_checkpoint: Path | None = None
    stop_signal: int = 0  # the signal that stopped the run (on any process), 0 if none
    interrupted: bool = False
    flops_per_step: int | None = None  # forward + backward of one optimizer step, counted (--count_flops)


def set_up(model_args: ModelArguments, data_args: DataArguments, args: AlignArguments) -> Run:
    """Accelerator, model, data, optimizer, schedule; the model and optimizer prepared by accelerate."""
    accelerator = build_accelerator(args)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    # Seeded before the model is built: fresh weights (presets) and dropout draw from this stream.
    torch.manual_seed(args.seed + accelerator.process_index)

    model, processor, counts = build_model(model_args, args, max_length=data_args.max_length)
    config = unwrap_alta_model(model, "alta").config
    with accelerator.main_process_first():
        dataset = load_train_dataset(data_args)
    loader, sampler, collator = build_dataloader(
        dataset, processor, config.vision_config, data_args, args, accelerator
    )
    optimizer, peak_lr = build_optimizer(model, args, accelerator.num_processes, accelerator.device)
    loss_fn = AltaPretrainingLoss.from_config(config)
    model, optimizer = accelerator.prepare(model, optimizer)

    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError("Fewer batches per epoch than --gradient_accumulation_steps.")
    settings = run_settings(args, accelerator.num_processes, dataset)
    unwrapped = accelerator.unwrap_model(model)
    return Run(
        model_args=model_args,
        data_args=data_args,
        args=args,
        accelerator=accelerator,
        model=model,
        alta=unwrap_alta_model(accelerator.unwrap_model(model), "alta"),
        processor=processor,
        loader=loader,
        sampler=sampler,
        collator=collator,
        optimizer=optimizer,
        loss_fn=loss_fn,
        peak_lr=peak_lr,
        warmup=args.warmup_steps if args.warmup_steps is not None else args.warmup_epochs * steps_per_epoch,
        total=args.schedule_steps if args.schedule_steps is not None else args.schedule_epochs * steps_per_epoch,
        max_steps=args.max_steps if args.max_steps is not None else int(args.max_epochs * steps_per_epoch),
        counts=counts,
        settings=settings,
        trainable=[(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad],
        state=TrainerState(settings=settings),
    )


def start_logging(run: Run) -> None:
    """Trackers (with the run's configuration) and one line saying what trains."""
    model_args, data_args, args, accelerator = run.model_args, run.data_args, run.args, run.accelerator
    if accelerator.trackers is not None and trackers(args.report_to):
        config = {**asdict(model_args), **asdict(data_args), **asdict(args)}
        accelerator.init_trackers(
            "alta-align", config={k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        )
    if accelerator.is_main_process:
        logger.info(
            "training %s: %d of %d parameters trainable (%.2f%%); %d processes x %d studies; peak lr %.3g; %d steps",
            model_args.adapter,
            run.counts["trainable"],
            run.counts["total"],
            100.0 * run.counts["trainable"] / max(run.counts["total"], 1),
            accelerator.num_processes,
            args.per_device_train_batch_size,
            run.peak_lr,
            run.max_steps,
        )


# ---------------------------------------------------------------------------------------------------------------
# 3. Resume
# ---------------------------------------------------------------------------------------------------------------


def resume(run: Run) -> None:
    """Load the checkpoint `--resume_from_checkpoint` names (weights, optimizer, RNG states, trainer state), after
    checking that it verifies and that the run's settings allow an exact continuation (training/checkpoints.py)."""
    args, accelerator = run.args, run.accelerator
    if not args.resume_from_checkpoint:
        return
    path = resolve_checkpoint(args.resume_from_checkpoint, args, accelerator.process_index)
    state = load_checkpoint(accelerator, path)
    run.state = check_resume_settings(state, run.settings, path, args.allow_inexact_resume)
    if not run.state.settings:
        run.state.settings = dict(run.settings)
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():  # accepted with --allow_inexact_resume only (resolve_checkpoint refuses otherwise)
        torch.manual_seed(args.seed + accelerator.process_index + 1_000_003 * run.state.global_step)
        logger.warning(
            "no random states for process %d in %s: dropout starts from a fresh seed", accelerator.process_index, path
        )
    run.last_checkpoint = path
    logger.info("resumed from %s at step %d", path, run.state.global_step)


# ---------------------------------------------------------------------------------------------------------------
# 4. One optimizer step
# ---------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """A non-finite loss, or parameters made non-finite by an update; `poisoned_from` is the first step whose
    weights are bad (checkpoints from that step on are marked non-finite)."""

    def __init__(self, message: str, poisoned_from: int | None = None) -> None:
        super().__init__(message)
        self.poisoned_from = poisoned_from


class NoReadableDataError(RuntimeError):
    """The run found no readable study for `--max_consecutive_skipped_batches` batches (or a whole epoch)."""


def forward_backward(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Forward, loss (features gathered across processes with grad), backward; every rank stops together on a
    non-finite loss."""
    accelerator = run.accelerator
    outputs = run.model(**batch, return_loss=False)
    losses = run.loss_fn(outputs)
    finite = torch.isfinite(losses["loss"].detach()).float()
    finite = accelerator.reduce(finite, reduction="sum") if accelerator.num_processes > 1 else finite
    if float(finite) < accelerator.num_processes:
        details = {k: float(v.detach()) for k, v in losses.items()}
        # The weights that produced it come from the last update: the checkpoint of that step holds them too.
        raise NonFiniteLossError(f"non-finite loss {details}", poisoned_from=run.state.global_step)
    accelerator.backward(losses["loss"] / run.args.gradient_accumulation_steps)
    return {k: float(v.detach()) for k, v in losses.items() if k != "loss"}


def counted_forward_backward(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """`forward_backward` under `torch.utils.flop_counter.FlopCounterMode` (`--count_flops`, on the first
    micro-batch): `run.flops_per_step` is its count times the micro-batches of a step. The counter sees the
    matrix products and attention of this process's forward and backward; the optimizer, the data pipeline and
    elementwise operations are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        losses = forward_backward(run, batch)
    run.flops_per_step = int(counter.get_total_flops()) * run.args.gradient_accumulation_steps
    return losses


def optimizer_step(run: Run) -> None:
    """Clip (if asked), step, clear the gradients, clamp the logit scales; stop if the update made a trainable
    parameter non-finite (before any checkpoint can hold it)."""
    if run.args.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.alta.clamp_logit_scales()
    if run.trainable:
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in run.trainable])
        if not bool(finite.all()):
            bad = [name for (name, _), ok in zip(run.trainable, finite.tolist()) if not ok]
            raise NonFiniteLossError(
                f"the update made {len(bad)} parameter(s) non-finite, e.g. {bad[:5]}",
                poisoned_from=run.state.global_step + 1,
            )


def set_learning_rate(run: Run) -> float:
    lr = learning_rate_at(run.state.global_step, run.peak_lr, run.warmup, run.total, run.args.min_learning_rate)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


# ---------------------------------------------------------------------------------------------------------------
# 5. The loop: steps, logging, validation, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def _gather_counts(accelerator, values: list[int]) -> torch.Tensor:
    """`[num_processes, len(values)]`: every process's `values` (one small collective)."""
    local = torch.tensor([values], dtype=torch.long, device=accelerator.device)
    return accelerator.gather(local).cpu() if accelerator.num_processes > 1 else local.cpu()


def _data_source(data_args: DataArguments) -> str:
    if data_args.train_csv:
        root = data_args.image_root or str(Path(data_args.train_csv).resolve().parent)
        return f"--image_root {root!r} (the paths of --train_csv {data_args.train_csv!r} are relative to it)"
    return f"--dataset_path {data_args.dataset_path!r}"


def _no_readable_data(run: Run, batches: int, skipped: int, reason: str) -> NoReadableDataError:
    example = run.skips.examples[0] if run.skips.examples else "none on this process"
    return NoReadableDataError(
        f"{reason}: {batches} batches in a row ({skipped} studies) had no readable study on at least one process, "
        f"so the run stopped instead of skipping everything. The images come from {_data_source(run.data_args)}. "
        f"First unreadable study on process {run.accelerator.process_index}: {example}. Check that the paths exist "
        "and decode (--max_consecutive_skipped_batches sets the limit)."
    )


def epoch_batches(run: Run):
    """The current epoch's batches from where the state stands (on the CPU; `_global_studies` holds the number of
    studies of this micro-batch over all processes).

    Unreadable studies are counted over all processes (`state.skipped_studies`) and each is named once
    (`run.skips`). A micro-batch in which some process has no readable study is skipped by every process, so all of
    them take the same steps; too many such batches in a row stop the run (`NoReadableDataError`).
    """
    accum = run.args.gradient_accumulation_steps
    run.sampler.set_epoch(run.state.epoch, start_batch=run.state.batch_in_epoch * accum)
    run.collator.set_epoch(run.state.epoch)
    limit = run.data_args.max_consecutive_skipped_batches
    for batch in run.loader:
        skipped = batch.pop("skipped")
        run.skips.record(skipped)
        run.truncations.record(batch.pop("truncated", []))
        readable = int(batch["input_ids"].shape[0]) if "input_ids" in batch else 0
        counts = _gather_counts(run.accelerator, [readable, len(skipped)])
        run.state.skipped_studies += int(counts[:, 1].sum())
        if int(counts[:, 0].min()) == 0:
            empty = [r for r in range(counts.shape[0]) if int(counts[r, 0]) == 0]
            if readable:
                logger.warning(
                    "process(es) %s had no readable study in this batch: process %d leaves out its %d readable "
                    "studies too, so that every process takes the same steps",
                    empty,
                    run.accelerator.process_index,
                    readable,
                )
            run.consecutive_skipped += 1
            run.studies_left_out += int(counts.sum())
            run.epoch_left_out += int(counts.sum())
            if run.consecutive_skipped >= limit:
                raise _no_readable_data(run, run.consecutive_skipped, run.studies_left_out, "No readable data")
            continue
        run.consecutive_skipped = run.studies_left_out = 0
        run.epoch_readable += int(counts[:, 0].sum())
        batch["_global_studies"] = int(counts[:, 0].sum())
        yield batch


def log_step(run: Run, step_losses: dict[str, float], lr: float, throughput: float) -> None:
    """Record the step in the trainer state and, every `--logging_steps`, in the trackers."""
    state = run.state
    state.losses.append({"step": state.global_step, **step_losses})
    if state.global_step % run.args.logging_steps and state.global_step != run.max_steps:
        return
    alta = run.alta.alta
    log = {f"train/{k}": v for k, v in step_losses.items()}
    log.update(
        {
            "train/lr": lr,
            "train/logit_scale": float(alta.logit_scale.detach().exp()),
            "train/samples_per_second": throughput,
            "train/skipped_studies": state.skipped_studies,
        }
    )
    for i, scale in enumerate(alta.local_scales(), start=1):
        log[f"train/logit_scale_local{i}"] = float(scale.detach())
    run.accelerator.log(log, step=state.global_step)


def after_step(run: Run) -> None:
    """Periodic validation and checkpoint."""
    step, args = run.state.global_step, run.args
    if args.eval_steps and run.data_args.validation_path and step % args.eval_steps == 0:
        run.metrics.update(validate(run.alta, run.processor, run.data_args, run.accelerator, step))
        run.model.train()
    if args.checkpointing_steps and step % args.checkpointing_steps == 0:
        run.last_checkpoint = save_checkpoint(run.accelerator, run.state, args)


def train_epoch(run: Run, progress: Any, clock: tuple[float, int]) -> bool:
    """Train until the epoch ends, `max_steps` is reached or the run is interrupted; True if the epoch ended."""
    state, accum = run.state, run.args.gradient_accumulation_steps
    started, samples_at_start = clock
    micro = 0
    for batch in epoch_batches(run):
        studies = batch.pop("_global_studies")
        batch = {k: v.to(run.accelerator.device) for k, v in batch.items()}
        lr = set_learning_rate(run)
        if run.args.count_flops and run.flops_per_step is None:
            step_losses = counted_forward_backward(run, batch)
        else:
            step_losses = forward_backward(run, batch)
        micro += 1
        state.samples_seen += studies
        if micro % accum:
            continue
        optimizer_step(run)
        state.global_step += 1
        state.batch_in_epoch += 1
        throughput = (state.samples_seen - samples_at_start) / max(time.perf_counter() - started, 1e-9)
        progress.update(1)
        progress.set_postfix(loss=f"{step_losses['total_loss']:.4f}", samples_s=f"{throughput:.1f}")
        log_step(run, step_losses, lr, throughput)
        after_step(run)
        if state.global_step >= run.max_steps:
            return False
        if stop_requested(run):
            run.interrupted = True
            return False
    return True


def stop_requested(run: Run) -> bool:
    """Whether a signal asked any process to stop (one tiny collective, so that every process stops after the same
    step); `run.stop_signal` keeps the signal number."""
    signum = run.monitor.signum if run.monitor is not None and run.monitor.signum else 0
    if run.accelerator.num_processes > 1:
        import torch.distributed as dist

        flag = torch.tensor([signum], dtype=torch.long, device=run.accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    run.stop_signal = signum
    return signum > 0


def train(run: Run) -> float:
    """The training loop; a signal (see training/signals.py) stops it after the current step. Returns its seconds."""
    from tqdm.auto import tqdm

    accelerator, state = run.accelerator, run.state
    progress = tqdm(total=run.max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    clock = (time.perf_counter(), state.samples_seen)  # for the samples/s of this session
    try:
        run.model.train()
        while state.global_step < run.max_steps and not run.interrupted:
            started_at_batch = state.batch_in_epoch
            run.epoch_readable = run.epoch_left_out = 0
            if train_epoch(run, progress, clock):
                if started_at_batch == 0 and run.epoch_readable == 0:
                    raise _no_readable_data(
                        run, len(run.sampler), run.epoch_left_out, f"No readable study in epoch {state.epoch}"
                    )
                state.epoch += 1
                state.batch_in_epoch = 0
    except NonFiniteLossError as err:
        raise _non_finite(run, err) from None
    finally:
        progress.close()
    return time.perf_counter() - clock[0]


def _non_finite(run: Run, err: NonFiniteLossError) -> NonFiniteLossError:
    """The error that ends a run on a non-finite loss or update: checkpoints whose weights led to it are marked (so
    `latest` skips them) and the last good one is named."""
    step = run.state.global_step + 1
    poisoned_from = err.poisoned_from if err.poisoned_from is not None else step
    marked = []
    if run.accelerator.is_main_process:
        marked = mark_non_finite(run.args, poisoned_from, f"stopped at step {step}: {err}")
    good = [
        p
        for p in complete_checkpoints(run.args)
        if checkpoint_step(p) < poisoned_from and not (p / NON_FINITE_FILE).is_file()
    ]
    message = f"Stopped at step {step}: {err}. Nothing was saved for this step"
    if marked:
        message += f"; marked {[p.name for p in marked]} non-finite (their weights led here), so `latest` skips them"
    message += f"; the last good checkpoint is {good[-1]}" if good else "; no checkpoint of this run is known good"
    return NonFiniteLossError(message + ".", poisoned_from=poisoned_from)


def validate(model, processor, data_args: DataArguments, accelerator, step: int) -> dict[str, float]:
    """Zero-shot accuracy on a labelled validation split (`label` column): the class names are the prompts, and
    whole studies are scored through the multiview path."""
    from inference.zero_shot import ZeroShotClassifier
    from modeling_alta.configuration_alta import STUDY_SLOTS
    from processing.datasets import load_study_dataset

    dataset = load_study_dataset(data_args.validation_path, split=data_args.validation_split)
    if "label" not in dataset.column_names:
        raise ValueError(f"{data_args.validation_path}: validation needs a 'label' column; has {dataset.column_names}")
    labels = sorted(set(dataset["label"]))
    model.eval()
    classifier = ZeroShotClassifier(model, processor, {label: [label.lower()] for label in labels})
    studies = [{v: row[v] for v in STUDY_SLOTS} for row in dataset]
    with torch.no_grad():
        predicted = classifier.predict(studies, progress=False).labels
    accuracy = sum(p == y for p, y in zip(predicted, dataset["label"])) / max(len(dataset), 1)
    accelerator.log({"val/zero_shot_accuracy": accuracy}, step=step)
    logger.info("step %d: zero-shot validation accuracy %.4f", step, accuracy)
    return {"val_zero_shot_accuracy": accuracy}


# ---------------------------------------------------------------------------------------------------------------
# 6. End of the run: summary and export
# ---------------------------------------------------------------------------------------------------------------


def loss_curve(losses: list[dict[str, float]], window: int) -> list[dict[str, float]]:
    """Each loss averaged over consecutive windows of `window` steps (the learning curve kept with the model)."""
    window = max(int(window), 1)
    curve = []
    for start in range(0, len(losses), window):
        chunk = losses[start : start + window]
        keys = [k for k in chunk[0] if k != "step"]
        curve.append({"step": chunk[-1]["step"], **{k: sum(c[k] for c in chunk) / len(chunk) for k in keys}})
    return curve


def summarize(run: Run, train_seconds: float) -> dict[str, Any]:
    """The run's results (also written to `model/train_results.json`)."""
    state = run.state
    for notices in (run.skips, run.truncations):
        line = notices.summary()
        if line:
            logger.warning(line)
    if state.skipped_studies:
        logger.warning(
            "%d studies were left out of batches over the whole run (all processes, resumes included)",
            state.skipped_studies,
        )
    return {
        "global_step": state.global_step,
        "samples_seen": state.samples_seen,
        "train_seconds": train_seconds,
        "skipped_studies": state.skipped_studies,
        "skipped_examples": run.skips.examples,
        "truncated_reports": len(run.truncations.studies),
        "truncated_examples": run.truncations.examples,
        "trainable_parameters": run.counts["trainable"],
        "total_parameters": run.counts["total"],
        **(
            {"flops_per_step": run.flops_per_step, "train_flops": run.flops_per_step * state.global_step}
            if run.flops_per_step is not None
            else {}
        ),
        "final_losses": state.losses[-1] if state.losses else {},
        "loss_curve": loss_curve(state.losses, run.args.logging_steps),
        "interrupted": run.interrupted,
        "exit_code": 128 + run.stop_signal if run.interrupted else 0,
        **run.metrics,
    }


def export(run: Run, result: dict[str, Any]) -> Path:
    """Write `OUTPUT/model/` once (training/export.py): the model with its code, the processor, a card, the run's
    results; the adapter set in `alta_adapter/` (ALTA runs with `--save_adapter`) or PEFT's files in
    `peft_adapter/` (lora/ia3, beside the merged model); push that folder when `--push_to_hub`.

    The folder is written under a staging name and renamed into place when complete, so a run killed during the
    export leaves no `model/` that loads half-written (and a previous complete `model/` stays until replaced).
    """
    from processing.atomic import staged_directory
    from training.export import export_model, push_folder

    out = Path(run.args.output_dir) / "model"
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        method = run.model_args.adapter
        with staged_directory(out) as staged:
            export_model(
                accelerator.unwrap_model(run.model),
                run.processor,
                staged,
                repo_id=run.args.hub_model_id,
                adapter_method=method,
                save_alta_adapter=run.args.save_adapter and method == "alta",
                peft_export="merged",
                extra_files={"train_results.json": json.dumps(result, indent=1, default=str)},
            )
        if run.args.push_to_hub:
            push_folder(out, run.args.hub_model_id)
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run `align.py`; returns the run's results, with `exit_code` (0, or 130 / 143 for a run stopped by SIGINT /
    SIGTERM) that the command line exits with."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_args, data_args, args = parse_args(argv)
    exit_with_launcher()  # before the slow set-up: a launcher killed meanwhile takes this process with it
    run = set_up(model_args, data_args, args)
    resume(run)
    start_logging(run)
    # From here a signal stops the run cleanly (before, Ctrl-C interrupts the set-up as usual: nothing to save).
    run.monitor = InterruptMonitor().install()
    try:
        train_seconds = train(run)
        if run.interrupted:
            step = run.state.global_step
            path = run.last_checkpoint
            if path is None or checkpoint_step(path) != step:
                path = save_checkpoint(run.accelerator, run.state, args)
            logger.warning(
                "interrupted (%s) at step %d: saved %s; resume with --resume_from_checkpoint latest",
                signal.Signals(run.stop_signal).name,
                step,
                path,
            )
        else:
            run.monitor.phase = "export"  # the run has finished: a signal no longer stops it
        result = summarize(run, train_seconds)
        if not run.interrupted:
            result["model_dir"] = str(export(run, result))
            if run.monitor.requested:
                logger.warning("a signal arrived after the last step: the run finished and its export completed")
        run.accelerator.end_training()
    finally:
        run.monitor.uninstall()
    return result


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
