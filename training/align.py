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

import torch

from modeling_alta.modeling_alta import unwrap_alta_model
from training.arguments import AlignArguments, DataArguments, ModelArguments
from training.build import build_accelerator, build_model, build_optimizer, learning_rate_at, trackers
from training.checkpoints import TrainerState, load_checkpoint, resolve_checkpoint, save_checkpoint
from training.data import build_dataloader, load_train_dataset
from training.losses import AltaPretrainingLoss


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
    state: TrainerState = field(default_factory=TrainerState)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    last_checkpoint: Path | None = None
    interrupted: bool = False


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
    optimizer, peak_lr = build_optimizer(model, args, accelerator.num_processes)
    loss_fn = AltaPretrainingLoss.from_config(config)
    model, optimizer = accelerator.prepare(model, optimizer)

    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError("Fewer batches per epoch than --gradient_accumulation_steps.")
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
    """Load the checkpoint `--resume_from_checkpoint` names (weights, optimizer, RNG states, trainer state)."""
    if not run.args.resume_from_checkpoint:
        return
    path = resolve_checkpoint(run.args.resume_from_checkpoint, run.args)
    run.state = load_checkpoint(run.accelerator, path)
    logger.info("resumed from %s at step %d", path, run.state.global_step)


# ---------------------------------------------------------------------------------------------------------------
# 4. One optimizer step
# ---------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    pass


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
        raise NonFiniteLossError(f"non-finite loss {details}")
    accelerator.backward(losses["loss"] / run.args.gradient_accumulation_steps)
    return {k: float(v.detach()) for k, v in losses.items() if k != "loss"}


def optimizer_step(run: Run) -> None:
    """Clip (if asked), step, clear the gradients, clamp the logit scales."""
    if run.args.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.alta.clamp_logit_scales()


def set_learning_rate(run: Run) -> float:
    lr = learning_rate_at(run.state.global_step, run.peak_lr, run.warmup, run.total, run.args.min_learning_rate)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


# ---------------------------------------------------------------------------------------------------------------
# 5. The loop: steps, logging, validation, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def epoch_batches(run: Run):
    """The current epoch's batches from where the state stands, on the run's device; unreadable studies are
    recorded (and logged) and batches left empty by them are passed over."""
    accum = run.args.gradient_accumulation_steps
    run.sampler.set_epoch(run.state.epoch, start_batch=run.state.batch_in_epoch * accum)
    run.collator.set_epoch(run.state.epoch)
    for batch in run.loader:
        for message in batch.pop("skipped"):
            run.skipped.append(message)
            logger.warning("skipping unreadable study: %s", message)
        if "input_ids" not in batch:  # every study of this micro-batch was unreadable
            continue
        yield {k: v.to(run.accelerator.device) for k, v in batch.items()}


def log_step(run: Run, step_losses: dict[str, float], lr: float, throughput: float) -> None:
    """Record the step in the trainer state and, every `--logging_steps`, in the trackers."""
    state = run.state
    state.skipped_studies = len(run.skipped)
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
        lr = set_learning_rate(run)
        step_losses = forward_backward(run, batch)
        micro += 1
        state.samples_seen += batch["input_ids"].shape[0] * run.accelerator.num_processes
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
        if state.global_step >= run.max_steps or run.interrupted:
            return False
    return True


def train(run: Run) -> float:
    """The training loop; Ctrl-C (on the main process) stops it after the current step. Returns its seconds."""
    from tqdm.auto import tqdm

    accelerator, state = run.accelerator, run.state
    progress = tqdm(total=run.max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    previous_handler = None

    def on_interrupt(signum, frame):  # noqa: ARG001
        run.interrupted = True

    if accelerator.is_main_process and hasattr(signal, "SIGINT"):
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    clock = (time.perf_counter(), state.samples_seen)  # for the samples/s of this session
    try:
        run.model.train()
        while state.global_step < run.max_steps and not run.interrupted:
            if train_epoch(run, progress, clock):
                state.epoch += 1
                state.batch_in_epoch = 0
    except NonFiniteLossError as err:
        where = f"; the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint else ""
        raise NonFiniteLossError(
            f"Stopped at step {state.global_step + 1}: {err}. Nothing was saved for this step{where}."
        ) from None
    finally:
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    return time.perf_counter() - clock[0]


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
        predicted = classifier.predict(studies).labels
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
    state.skipped_studies = len(run.skipped)
    if run.skipped:
        logger.warning("skipped %d unreadable studies in this run: %s", len(run.skipped), run.skipped[:10])
    return {
        "global_step": state.global_step,
        "samples_seen": state.samples_seen,
        "train_seconds": train_seconds,
        "skipped_studies": state.skipped_studies,
        "trainable_parameters": run.counts["trainable"],
        "total_parameters": run.counts["total"],
        "final_losses": state.losses[-1] if state.losses else {},
        "loss_curve": loss_curve(state.losses, run.args.logging_steps),
        "interrupted": run.interrupted,
        **run.metrics,
    }


def export(run: Run, result: dict[str, Any]) -> Path:
    """Write `OUTPUT/model/` once (training/export.py): the model with its code, the processor, a card, the run's
    results; the adapter set in `alta_adapter/` (ALTA runs with `--save_adapter`) or PEFT's files in
    `peft_adapter/` (lora/ia3, beside the merged model); push that folder when `--push_to_hub`."""
    from training.export import export_model

    out = Path(run.args.output_dir) / "model"
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        method = run.model_args.adapter
        export_model(
            accelerator.unwrap_model(run.model),
            run.processor,
            out,
            push_to_hub=run.args.push_to_hub,
            repo_id=run.args.hub_model_id,
            adapter_method=method,
            save_alta_adapter=run.args.save_adapter and method == "alta",
            peft_export="merged",
            extra_files={"train_results.json": json.dumps(result, indent=1, default=str)},
        )
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_args, data_args, args = parse_args(argv)
    run = set_up(model_args, data_args, args)
    resume(run)
    start_logging(run)
    train_seconds = train(run)
    if run.interrupted:
        path = save_checkpoint(run.accelerator, run.state, args)
        logger.warning("interrupted: saved %s; resume with --resume_from_checkpoint latest", path)
    result = summarize(run, train_seconds)
    if not run.interrupted:
        result["model_dir"] = str(export(run, result))
    run.accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
