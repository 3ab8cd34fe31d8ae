"""Arguments of `training/align.py`, as `HfArgumentParser` dataclasses.

One YAML/JSON file can hold every field (`--config recipe.yaml`, or the file as the only argument); any field can
also be given, or overridden, on the command line. Defaults reproduce the reference recipe
(alta_reference.md §5) except where a field's help says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field


ADAPTER_METHODS = ("alta", "lora", "ia3", "full", "mae", "backbone")
# `--optim` values: the names transformers' TrainingArguments uses for the same two torch optimizers.
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")


@dataclass
class ModelArguments:
    preset: str | None = field(
        default=None,
        metadata={"help": "Build a fresh model from a preset (alta-base, alta-tiny); see configuration/."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A folder from alta-convert / save_pretrained / align.py (or a Hub id) to start from."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Folder with the text model's vocab.txt or tokenizer.json (default: model_name_or_path). Needed "
            "with --preset."
        },
    )
    adapter: str = field(
        default="alta",
        metadata={
            "help": "What trains: 'alta' (the reference adapter set), 'lora' or 'ia3' (PEFT on the frozen model), "
            "'full' (everything), 'mae' (masked image + report modeling with adapters off and the backbone "
            "trainable, to build a backbone first), 'backbone' (the same with the contrastive losses too, for a text "
            "tower whose [CLS] must be trained, as CXR-BERT-specialized's was)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--adapter lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (--adapter lora)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (--adapter lora)."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'JSON merged into the preset/loaded config, e.g. \'{"vision_config": {"image_size": 64}}\'.'
        },
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})
    text_dropout: float | None = field(
        default=None, metadata={"help": "Override the text tower's dropout (CXR-BERT uses 0.25)."}
    )
    local_loss_chunk_size: int | None = field(
        default=None, metadata={"help": "Texts per chunk in the vectorised local loss (memory bound)."}
    )

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTER_METHODS:
            raise ValueError(f"--adapter must be one of {ADAPTER_METHODS}; got {self.adapter!r}.")
        if self.preset is None and self.model_name_or_path is None:
            raise ValueError("Give --model_name_or_path (a converted or saved ALTA folder) or --preset.")


@dataclass
class DataArguments:
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A `datasets` folder (save_to_disk) or Hub id with frontal/lateral/prior_* and report."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a DatasetDict to train on."})
    train_csv: str | None = field(
        default=None, metadata={"help": "The reference's train.csv layout (image_path, ..., report; -1 = missing)."}
    )
    image_root: str | None = field(default=None, metadata={"help": "Root that train.csv paths are relative to."})
    allow_absolute_image_paths: bool = field(
        default=False,
        metadata={
            "help": "Accept absolute image paths in --train_csv (by default every path must be relative and stay "
            "inside --image_root)."
        },
    )
    validation_path: str | None = field(
        default=None,
        metadata={"help": "A `datasets` folder with a `label` column for periodic zero-shot validation."},
    )
    validation_split: str = field(default="validation", metadata={"help": "Split of the validation DatasetDict."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N studies."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    cache_decoded_studies_mb: float = field(
        default=0.0,
        metadata={
            "help": "Keep decoded studies in memory, up to this many MiB of pixels in each process and DataLoader "
            "worker, so that later epochs do not read and decode their images again (training is bitwise the same; "
            "0 = off). Images are held at their stored size: it pays off for data stored near the training size."
        },
    )
    max_consecutive_skipped_batches: int = field(
        default=20,
        metadata={
            "help": "Stop the run when this many batches in a row had to be skipped (no readable study on some "
            "process): a wrong --image_root or an unmounted folder fails fast instead of skipping every study."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Longest report in tokens (longer ones are truncated)."})
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every batch to --max_length (the reference) instead of to its longest report; same losses, "
            "more text-tower work."
        },
    )
    mlm_probability: float = field(default=0.5, metadata={"help": "Share of report tokens masked for MLM."})
    mlm_always_mask_words: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated words (each one token of the tokenizer) masked in every report wherever they "
            "occur, on top of --mlm_probability: the words that name a finding, so that the image-conditioned MLM "
            "cannot recover them from the rest of a templated report. Default: none (the reference rule)."
        },
    )
    augment: bool = field(default=True, metadata={"help": "Random affine + jitter (shared current/prior draws)."})
    shuffle_reports: bool = field(default=True, metadata={"help": "Shuffle report sentences (as the reference)."})

    def __post_init__(self) -> None:
        if self.max_consecutive_skipped_batches < 1:
            raise ValueError(
                f"--max_consecutive_skipped_batches must be >= 1; got {self.max_consecutive_skipped_batches}."
            )


@dataclass
class AlignArguments:
    output_dir: str = field(default="outputs/align", metadata={"help": "Where checkpoints and the model go."})
    per_device_train_batch_size: int = field(default=24, metadata={"help": "Studies per process per step."})
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Group studies of similar report length into batches (less padding; the same batches on any "
            "number of processes and workers, exact resume)."
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimizer step. Plain accumulation: the contrastive negatives are those of "
            "one micro-batch (times the processes), not of the accumulated batch."
        },
    )
    base_learning_rate: float = field(
        default=1.5e-4, metadata={"help": "Peak lr per 256 studies: lr = base * effective batch / 256."}
    )
    learning_rate: float | None = field(default=None, metadata={"help": "Absolute peak lr (overrides the scaling)."})
    min_learning_rate: float = field(default=0.0, metadata={"help": "Floor of the cosine schedule."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases or 1-d tensors)."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.95)
    adam_epsilon: float = field(default=1e-8)
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "adamw_torch_fused: torch's AdamW as one fused kernel (4x faster than its for-loop at "
            "alta-base on 2 CPU cores, benchmarks/RESULTS.md) or adamw_torch: its for-loop, as the reference; "
            "they differ by float rounding."
        },
    )
    warmup_epochs: float = field(default=10.0, metadata={"help": "Linear warm-up length, in epochs."})
    schedule_epochs: float = field(default=100.0, metadata={"help": "Length the cosine schedule is laid out for."})
    max_epochs: float = field(default=30.0, metadata={"help": "Stop after this many epochs (the reference: 30)."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up in steps (overrides warmup_epochs)."})
    schedule_steps: int | None = field(
        default=None, metadata={"help": "Cosine length in steps (overrides schedule_epochs)."}
    )
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps."})
    mask_ratio: float = field(
        default=0.75,
        metadata={"help": "Share of image patches removed per frame (0: none, with --reconstruction_loss_weight 0)."},
    )
    norm_pix_loss: bool = field(default=True, metadata={"help": "Per-patch normalised reconstruction target."})
    contrastive_loss_weight: float = field(default=1.0)
    local_loss_weight: float = field(default=1.0)
    reconstruction_loss_weight: float = field(default=1.0)
    mlm_loss_weight: float = field(default=1.0)
    count_flops: bool = field(
        default=False,
        metadata={
            "help": "Count the FLOPs of the first optimizer step (torch.utils.flop_counter: matrix products and "
            "attention, forward and backward, this process) and report flops_per_step and train_flops."
        },
    )
    mixed_precision: str = field(
        default="no",
        metadata={
            "help": "no | fp16 | bf16 (the reference trains in fp16). On a CPU without native support for it "
            "(bf16: AVX512_BF16 or AMX-BF16) it runs fp32 with a warning, unless --force_cpu_mixed_precision."
        },
    )
    force_cpu_mixed_precision: bool = field(
        default=False, metadata={"help": "Use --mixed_precision on a CPU that would emulate it (slow)."}
    )
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients (the reference does not)."})
    cpu: bool = field(default=False, metadata={"help": "Force CPU (also needed for multi-process CPU runs)."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "save_state every N optimizer steps."})
    checkpoints_total_limit: int | None = field(
        default=3,
        metadata={
            "help": "Keep only the last K checkpoints (and, with K = 1, also the one before: the newest whose weights "
            "are known to give a finite loss)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'latest' (the newest checkpoint in output_dir/checkpoints that verifies) or a checkpoint folder."
        },
    )
    allow_inexact_resume: bool = field(
        default=False,
        metadata={
            "help": "Resume even when the run would not continue exactly: another per-device batch size, number of "
            "processes, gradient accumulation, seed or dataset, or missing random states (refused by default)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Data order, augmentation, masking: all derive from it."})
    logging_steps: int = field(default=10, metadata={"help": "Log to trackers every N steps."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard | wandb | all | none"})
    eval_steps: int | None = field(default=None, metadata={"help": "Zero-shot validation every N steps."})
    find_unused_parameters: bool = field(default=False, metadata={"help": "DDP option (needed for odd setups)."})
    save_adapter: bool = field(default=True, metadata={"help": "Also write the adapter-only weights at the end."})
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16; got {self.mixed_precision!r}.")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"--optim must be one of {', '.join(OPTIMIZERS)}; got {self.optim!r}.")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError(
                "--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1; got "
                f"{self.per_device_train_batch_size} and {self.gradient_accumulation_steps}."
            )
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 0:
            raise ValueError(f"--checkpoints_total_limit must be >= 0; got {self.checkpoints_total_limit}.")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio must be in [0, 1); got {self.mask_ratio}.")
        if self.mask_ratio == 0.0 and self.reconstruction_loss_weight > 0:
            raise ValueError(
                "--mask_ratio 0 removes no patch, so there is nothing to reconstruct: set "
                f"--reconstruction_loss_weight 0 (got {self.reconstruction_loss_weight})."
            )
