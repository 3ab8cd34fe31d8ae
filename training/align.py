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
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # `python training/align.py` / `accelerate launch training/align.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from training.arguments import AlignArguments, DataArguments, ModelArguments
from training.losses import AltaPretrainingLoss


logger = logging.getLogger("alta.align")
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


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
# 2. Accelerator
# ---------------------------------------------------------------------------------------------------------------


def build_accelerator(args: AlignArguments):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = _trackers(args.report_to)
    # Without cpu=True, a CPU launch with several processes silently runs independent single processes.
    cpu = args.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_dir=args.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"The launcher started {launched} processes but the accelerator sees {accelerator.num_processes}; on CPU "
            "launch with `accelerate launch --multi_gpu --num_processes N ... --cpu` (see configuration/accelerate)."
        )
    return accelerator


def _trackers(report_to: str) -> list[str]:
    if report_to in ("none", "", None):
        return []
    wanted = ["tensorboard", "wandb"] if report_to == "all" else [t.strip() for t in report_to.split(",")]
    out = []
    for name in wanted:
        try:
            __import__("tensorboard" if name == "tensorboard" else name)
            out.append(name)
        except ImportError:
            logger.warning("tracker %r requested but not installed; skipping it", name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 3. Model and processor
# ---------------------------------------------------------------------------------------------------------------


def build_model(model_args: ModelArguments, args: AlignArguments):
    from modeling_alta import AltaForPreTraining

    overrides = {
        "contrastive_loss_weight": args.contrastive_loss_weight,
        "local_loss_weight": args.local_loss_weight,
        "reconstruction_loss_weight": args.reconstruction_loss_weight,
        "mlm_loss_weight": args.mlm_loss_weight,
    }
    if model_args.adapter == "mae":  # masked-modeling pre-training of the backbone: no contrastive terms
        overrides.update(contrastive_loss_weight=0.0, local_loss_weight=0.0)
    if model_args.local_loss_chunk_size:
        overrides["local_loss_chunk_size"] = model_args.local_loss_chunk_size
    extra = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    recipe_keys = sorted(set(extra) & (set(overrides) | {"local_loss_chunk_size"}))
    if recipe_keys:
        flags = ", ".join(f"--{k}" for k in recipe_keys)
        raise ValueError(
            f"--config_overrides sets {recipe_keys}, which the training arguments own; pass {flags} instead."
        )
    if model_args.model_name_or_path:
        if extra:
            raise ValueError("--config_overrides applies to --preset models; a loaded model keeps its sizes.")
        model = AltaForPreTraining.from_pretrained(model_args.model_name_or_path)
        for key, value in overrides.items():
            setattr(model.config, key, value)
    else:
        from configuration import load_preset

        model = AltaForPreTraining(load_preset(model_args.preset, **{**extra, **overrides}))
    vision = model.config.vision_config
    vision.mask_ratio = args.mask_ratio
    vision.norm_pix_loss = args.norm_pix_loss
    if model_args.text_dropout is not None:
        text = model.config.text_config
        text.hidden_dropout_prob = text.attention_probs_dropout_prob = model_args.text_dropout
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = model_args.text_dropout
            if hasattr(module, "dropout") and isinstance(module.dropout, float):
                module.dropout = model_args.text_dropout
    tokenizer_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if tokenizer_source is None:
        raise ValueError("With --preset, give --tokenizer_name_or_path (a folder with the text model's vocab.txt).")
    processor = _load_processor(tokenizer_source, model)
    model, counts = apply_training_mode(model, model_args)
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, processor, counts


def _load_processor(source: str, model):
    from transformers import BertTokenizer

    from modeling_alta.processing_alta import AltaProcessor

    folder = Path(source)
    if (folder / "processor_config.json").is_file():
        return AltaProcessor.from_pretrained(source)
    tokenizer = BertTokenizer.from_pretrained(source)
    tokenizer.model_max_length = model.config.text_config.max_length
    return AltaProcessor(image_processor=image_processor_for(model.config), tokenizer=tokenizer)


def image_processor_for(config):
    """The reference transform scaled to the model's sizes (224/448 crops from 256/512 resizes at base size)."""
    from modeling_alta.image_processing_alta import AltaImageProcessor

    vision = config.vision_config
    return AltaImageProcessor(
        shortest_edge=round(vision.image_size * 256 / 224),
        crop_size=vision.image_size,
        reconstruction_shortest_edge=round(vision.reconstruction_image_size * 512 / 448),
        reconstruction_crop_size=vision.reconstruction_image_size,
    )


def apply_training_mode(model, model_args: ModelArguments) -> tuple[Any, dict[str, int]]:
    """Set `requires_grad` for the chosen method; return the model (a `PeftModel` for lora/ia3) and the counts."""
    method = model_args.adapter
    if method == "alta":
        model.set_adapters_enabled(True)
        return model, model.freeze_backbone()
    if method == "full":
        from training.peft_utils import apply_adapter_method

        return apply_adapter_method(model, "full"), model.num_trainable_parameters()
    if method in ("mae", "backbone"):
        model.set_adapters_enabled(False)
        unused = set()
        for module in model.alta_adapters():
            unused.update(id(p) for p in module.parameters())
        alta = model.alta
        if method == "mae":  # no contrastive loss: the heads and temperatures would get no gradient
            for head in (
                alta.vision_projection,
                alta.vision_local_projection,
                alta.text_projection,
                alta.text_local_projection,
            ):
                unused.update(id(p) for p in head.parameters())
            for name in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3"):
                unused.add(id(getattr(alta, name)))
        frozen_buffers = {
            id(model.alta.vision_model.embeddings.position_embedding),
            id(model.alta.vision_model.embeddings.missing_token),
            id(model.decoder.position_embedding),
        }
        for param in model.parameters():
            param.requires_grad_(id(param) not in unused and id(param) not in frozen_buffers)
        return model, model.num_trainable_parameters()
    from training.peft_utils import apply_adapter_method

    peft_model = apply_adapter_method(
        model, method, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return peft_model, {"trainable": trainable, "total": model.num_trainable_parameters()["total"]}


# ---------------------------------------------------------------------------------------------------------------
# 4. Data
# ---------------------------------------------------------------------------------------------------------------


def load_train_dataset(data_args: DataArguments):
    from processing.datasets import dataset_from_reference_csv, load_study_dataset

    if data_args.dataset_path:
        dataset = load_study_dataset(data_args.dataset_path, split=data_args.dataset_split)
    elif data_args.train_csv:
        dataset = dataset_from_reference_csv(data_args.train_csv, image_root=data_args.image_root)
    else:
        raise ValueError("Give training data: --dataset_path (datasets folder / Hub id) or --train_csv.")
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return dataset


class IndexedStudies(torch.utils.data.Dataset):
    """A study dataset whose items carry their index (the key of all per-study randomness)."""

    def __init__(self, dataset) -> None:
        from processing.datasets import set_study_transform

        self.dataset = set_study_transform(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[int(index)])
        item["index"] = int(index)
        return item


class GlobalBatchSampler(Sampler[list[int]]):
    """Per-epoch shuffled batches, sharded so that the processes' batches of one step, concatenated in rank order,
    are exactly the one-process batch of `batch_size * world_size` studies. Drops the last incomplete batch."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(
                f"The dataset has {num_samples} studies, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)."
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.num_samples // self.global_batch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.start_batch, self.num_samples // self.global_batch):
            start = b * self.global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size]


@dataclass
class AlignCollator:
    """Wraps `AltaPretrainingCollator`: drops unreadable studies, and seeds every study's augmentation, sentence
    shuffle, MLM masking and patch-masking noise from `(seed, epoch, index)`.

    Dropped studies are reported in the batch under `"skipped"` (a list of messages), because with DataLoader
    workers the collator runs in another process and could not count them itself.
    """

    collator: Any
    seed: int
    num_patches: int
    num_slots: int
    epoch: int = 0

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        parts, noises, skipped = [], [], []
        for sample in samples:
            if not sample.get("valid", True):
                skipped.append(f"study index {sample['index']}: {sample.get('error')}")
                continue
            key = [self.seed, self.epoch, sample["index"]]
            try:
                parts.append(self.collator.collate_keyed([sample], key))
            except ValueError as err:  # the collator dropped it (unreadable) or found it unusable
                skipped.append(f"study index {sample['index']}: {err}")
                continue
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([*key, 1]).generate_state(1)[0]))
            noises.append(torch.rand(self.num_slots, self.num_patches, generator=generator))
        if not parts:
            return {"skipped": skipped}
        batch: dict[str, Any] = {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}
        batch["mask_noise"] = torch.stack(noises)
        batch["skipped"] = skipped
        return batch


def base_model(model):
    """The ALTA model itself, also when wrapped by PEFT."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def build_dataloader(dataset, processor, model, data_args: DataArguments, args: AlignArguments, accelerator):
    from processing.collate import AltaPretrainingCollator

    studies = IndexedStudies(dataset)
    sampler = GlobalBatchSampler(
        len(studies), args.per_device_train_batch_size, accelerator.num_processes, accelerator.process_index, args.seed
    )
    vision = base_model(model).config.vision_config
    collate = AlignCollator(
        AltaPretrainingCollator(
            processor,
            mlm_probability=data_args.mlm_probability,
            max_length=data_args.max_length,
            augment=data_args.augment,
            shuffle_reports=data_args.shuffle_reports,
        ),
        seed=args.seed,
        num_patches=vision.num_patches,
        num_slots=vision.num_slots,
    )
    loader = DataLoader(
        studies,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=data_args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
    )
    return loader, sampler, collate


# ---------------------------------------------------------------------------------------------------------------
# 5. Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------


def build_optimizer(model, args: AlignArguments, world_size: int) -> tuple[torch.optim.Optimizer, float]:
    """AdamW with the reference's groups: no decay on biases and tensors of at most one dimension."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    peak = args.learning_rate if args.learning_rate is not None else args.base_learning_rate * effective / 256
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    return optimizer, peak


def learning_rate_at(step: float, peak: float, warmup: float, total: float, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then half-cycle cosine to `floor` at `total` steps."""
    if step < warmup:
        return peak * step / max(warmup, 1e-12)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1e-12))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------------
# 6. Checkpoints
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    skipped_studies: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)


def _checkpoint_root(args: AlignArguments) -> Path:
    return Path(args.output_dir) / CHECKPOINT_DIR


def save_checkpoint(accelerator, state: TrainerState, args: AlignArguments) -> Path:
    path = _checkpoint_root(args) / f"step-{state.global_step:08d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if args.checkpoints_total_limit:
            existing = sorted(p for p in _checkpoint_root(args).glob("step-*") if (p / STATE_FILE).is_file())
            for old in existing[: -args.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def resolve_checkpoint(spec: str, args: AlignArguments) -> Path:
    if spec == "latest":
        candidates = sorted(p for p in _checkpoint_root(args).glob("step-*") if (p / STATE_FILE).is_file())
        if not candidates:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {_checkpoint_root(args)}")
        return candidates[-1]
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {spec}: not a checkpoint folder (no {STATE_FILE})")
    return path


# ---------------------------------------------------------------------------------------------------------------
# 7. The loop
# ---------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    pass


def train_step(model, batch, loss_fn, optimizer, accelerator, args: AlignArguments) -> dict[str, float]:
    outputs = model(**batch, return_loss=False)
    losses = loss_fn(outputs)
    finite = torch.isfinite(losses["loss"].detach()).float()
    finite = accelerator.reduce(finite, reduction="sum") if accelerator.num_processes > 1 else finite
    if float(finite) < accelerator.num_processes:
        details = {k: float(v.detach()) for k, v in losses.items()}
        raise NonFiniteLossError(f"non-finite loss {details}")
    accelerator.backward(losses["loss"] / args.gradient_accumulation_steps)
    return {k: float(v.detach()) for k, v in losses.items() if k != "loss"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_args, data_args, args = parse_args(argv)
    accelerator = build_accelerator(args)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed + accelerator.process_index)

    model, processor, counts = build_model(model_args, args)
    with accelerator.main_process_first():
        dataset = load_train_dataset(data_args)
    loader, sampler, collate = build_dataloader(dataset, processor, model, data_args, args, accelerator)
    optimizer, peak_lr = build_optimizer(model, args, accelerator.num_processes)
    loss_fn = AltaPretrainingLoss.from_config(base_model(model).config)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = base_model(accelerator.unwrap_model(model))

    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError("Fewer batches per epoch than --gradient_accumulation_steps.")
    warmup = args.warmup_steps if args.warmup_steps is not None else args.warmup_epochs * steps_per_epoch
    total = args.schedule_steps if args.schedule_steps is not None else args.schedule_epochs * steps_per_epoch
    max_steps = args.max_steps if args.max_steps is not None else int(args.max_epochs * steps_per_epoch)

    state = TrainerState()
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(args.resume_from_checkpoint, args)
        accelerator.load_state(str(path))
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        logger.info("resumed from %s at step %d", path, state.global_step)

    tracker_config = {**asdict(model_args), **asdict(data_args), **{k: v for k, v in asdict(args).items()}}
    if accelerator.trackers is not None and _trackers(args.report_to):
        accelerator.init_trackers(
            "alta-align", config={k: v for k, v in tracker_config.items() if isinstance(v, (int, float, str, bool))}
        )
    if accelerator.is_main_process:
        logger.info(
            "training %s: %d of %d parameters trainable (%.2f%%); %d processes x %d studies; peak lr %.3g; %d steps",
            model_args.adapter,
            counts["trainable"],
            counts["total"],
            100.0 * counts["trainable"] / max(counts["total"], 1),
            accelerator.num_processes,
            args.per_device_train_batch_size,
            peak_lr,
            max_steps,
        )

    from tqdm.auto import tqdm

    progress = tqdm(total=max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    interrupted = False
    previous_handler = None

    def on_interrupt(signum, frame):  # noqa: ARG001
        nonlocal interrupted
        interrupted = True

    if accelerator.is_main_process and hasattr(signal, "SIGINT"):
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    start = time.perf_counter()
    samples_at_start = state.samples_seen
    last_checkpoint: Path | None = None
    metrics: dict[str, Any] = {}
    skipped: list[str] = []
    try:
        model.train()
        while state.global_step < max_steps and not interrupted:
            sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch * args.gradient_accumulation_steps)
            collate.epoch = state.epoch
            micro = 0
            for batch in loader:
                for message in batch.pop("skipped"):
                    skipped.append(message)
                    logger.warning("skipping unreadable study: %s", message)
                if "input_ids" not in batch:  # every study of this micro-batch was unreadable
                    continue
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                lr = learning_rate_at(state.global_step, peak_lr, warmup, total, args.min_learning_rate)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_losses = train_step(model, batch, loss_fn, optimizer, accelerator, args)
                micro += 1
                state.samples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
                if micro % args.gradient_accumulation_steps:
                    continue
                if args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                unwrapped.clamp_logit_scales()
                state.global_step += 1
                state.batch_in_epoch += 1
                state.skipped_studies = len(skipped)
                state.losses.append({"step": state.global_step, **step_losses})
                elapsed = max(time.perf_counter() - start, 1e-9)
                throughput = (state.samples_seen - samples_at_start) / elapsed
                progress.update(1)
                progress.set_postfix(loss=f"{step_losses['total_loss']:.4f}", samples_s=f"{throughput:.1f}")
                if state.global_step % args.logging_steps == 0 or state.global_step == max_steps:
                    log = {f"train/{k}": v for k, v in step_losses.items()}
                    log.update(
                        {
                            "train/lr": lr,
                            "train/logit_scale": float(unwrapped.alta.logit_scale.detach().exp()),
                            "train/samples_per_second": throughput,
                            "train/skipped_studies": state.skipped_studies,
                        }
                    )
                    for i, scale in enumerate(unwrapped.alta.local_scales(), start=1):
                        log[f"train/logit_scale_local{i}"] = float(scale.detach())
                    accelerator.log(log, step=state.global_step)
                if args.eval_steps and data_args.validation_path and state.global_step % args.eval_steps == 0:
                    metrics.update(validate(unwrapped, processor, data_args, accelerator, state.global_step))
                    model.train()
                if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0:
                    last_checkpoint = save_checkpoint(accelerator, state, args)
                if state.global_step >= max_steps or interrupted:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    except NonFiniteLossError as err:
        where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
        raise NonFiniteLossError(
            f"Stopped at step {state.global_step + 1}: {err}. Nothing was saved for this step{where}."
        ) from None
    finally:
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    train_seconds = time.perf_counter() - start
    if interrupted:
        path = save_checkpoint(accelerator, state, args)
        logger.warning("interrupted: saved %s; resume with --resume_from_checkpoint latest", path)
    state.skipped_studies = len(skipped)
    if skipped:
        logger.warning("skipped %d unreadable studies in this run: %s", len(skipped), skipped[:10])
    result = {
        "global_step": state.global_step,
        "samples_seen": state.samples_seen,
        "train_seconds": train_seconds,
        "skipped_studies": state.skipped_studies,
        "trainable_parameters": counts["trainable"],
        "total_parameters": counts["total"],
        "final_losses": state.losses[-1] if state.losses else {},
        "loss_curve": loss_curve(state.losses, args.logging_steps),
        "interrupted": interrupted,
        **metrics,
    }
    if not interrupted:
        result["model_dir"] = str(export(accelerator, model, processor, model_args, args, result))
    accelerator.end_training()
    return result


# ---------------------------------------------------------------------------------------------------------------
# 8. Validation and export
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


def export(accelerator, model, processor, model_args: ModelArguments, args: AlignArguments, result: dict) -> Path:
    """Save the model (safetensors + code), the processor and the adapter-only weights; optionally push."""
    out = Path(args.output_dir) / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if model_args.adapter in ("lora", "ia3"):
            unwrapped.save_pretrained(out / "peft_adapter")  # PEFT's own files, for PeftModel.from_pretrained
            from training.peft_utils import merge_peft_model

            merge_peft_model(unwrapped).save_pretrained(out)  # a plain ALTA folder with the adaptation merged
        else:
            unwrapped.save_pretrained(out)
            if args.save_adapter and model_args.adapter == "alta" and hasattr(unwrapped, "save_alta_adapter"):
                unwrapped.save_alta_adapter(out / "alta_adapter")
        processor.save_pretrained(out)
        processor.image_processor.save_pretrained(out)
        (out / "train_results.json").write_text(json.dumps(result, indent=1, default=str))
        if args.push_to_hub:
            from training.export import export_model

            export_model(unwrapped, processor, out, push_to_hub=True, repo_id=args.hub_model_id)
    accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    main()
