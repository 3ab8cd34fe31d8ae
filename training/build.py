"""What `training/align.py` builds before its loop: the accelerator, the model for the chosen training method, its
processor, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from modeling_alta.modeling_alta import unwrap_alta_model

from .arguments import AlignArguments, ModelArguments


logger = logging.getLogger("alta.align")


# ---------------------------------------------------------------------------------------------------------------
# Accelerator
# ---------------------------------------------------------------------------------------------------------------


def build_accelerator(args: AlignArguments):
    """An `Accelerator` for the run; refuses a launch whose process count the accelerator does not see."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Without cpu=True, a CPU launch with several processes silently runs independent single processes.
    cpu = args.cpu or not torch.cuda.is_available()
    mixed_precision = args.mixed_precision
    if cpu and mixed_precision != "no":
        from inference.precision import cpu_precision

        # Emulated bf16/fp16 is several times slower than fp32: warn and run fp32 unless forced.
        mixed_precision = cpu_precision(mixed_precision, args.force_cpu_mixed_precision)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        log_with=trackers(args.report_to) or None,
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


def trackers(report_to: str) -> list[str]:
    """The installed trackers among those `--report_to` asks for (a missing one is logged and skipped)."""
    if report_to in ("none", "", None):
        return []
    wanted = ["tensorboard", "wandb"] if report_to == "all" else [t.strip() for t in report_to.split(",")]
    out = []
    for name in wanted:
        try:
            __import__(name)
            out.append(name)
        except ImportError:
            logger.warning("tracker %r requested but not installed; skipping it", name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Model and processor
# ---------------------------------------------------------------------------------------------------------------


def _loss_weights(model_args: ModelArguments, args: AlignArguments) -> dict[str, Any]:
    weights: dict[str, Any] = {
        "contrastive_loss_weight": args.contrastive_loss_weight,
        "local_loss_weight": args.local_loss_weight,
        "reconstruction_loss_weight": args.reconstruction_loss_weight,
        "mlm_loss_weight": args.mlm_loss_weight,
    }
    if model_args.adapter == "mae":  # masked-modeling pre-training of the backbone: no contrastive terms
        weights.update(contrastive_loss_weight=0.0, local_loss_weight=0.0)
    if model_args.local_loss_chunk_size:
        weights["local_loss_chunk_size"] = model_args.local_loss_chunk_size
    return weights


def _text_dropout(model_args: ModelArguments) -> dict[str, float]:
    if model_args.text_dropout is None:
        return {}
    p = model_args.text_dropout
    return {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def build_model(model_args: ModelArguments, args: AlignArguments, max_length: int | None = None):
    """The `AltaForPreTraining` to train (a `PeftModel` around it for lora/ia3), its processor, and the parameter
    counts `{"trainable", "total"}`. `max_length` (the run's report length) becomes the processor's, so the exported
    folder tokenises as the run did.

    Every setting that changes the modules (loss weights, text dropout, masking) goes into the config *before* the
    model is built, so the saved config is the one the run used.
    """
    from modeling_alta import AltaConfig, AltaForPreTraining

    weights = _loss_weights(model_args, args)
    extra = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    recipe_keys = sorted(set(extra) & (set(weights) | {"local_loss_chunk_size"}))
    if recipe_keys:
        flags = ", ".join(f"--{k}" for k in recipe_keys)
        raise ValueError(
            f"--config_overrides sets {recipe_keys}, which the training arguments own; pass {flags} instead."
        )
    if model_args.model_name_or_path:
        if extra:
            raise ValueError("--config_overrides applies to --preset models; a loaded model keeps its sizes.")
        config = AltaConfig.from_pretrained(model_args.model_name_or_path)
        for key, value in weights.items():
            setattr(config, key, value)
    else:
        from configuration import load_preset

        config = load_preset(model_args.preset, **{**extra, **weights})
    for key, value in _text_dropout(model_args).items():
        setattr(config.text_config, key, value)
    config.vision_config.mask_ratio = args.mask_ratio
    config.vision_config.norm_pix_loss = args.norm_pix_loss
    if model_args.model_name_or_path:
        model = AltaForPreTraining.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = AltaForPreTraining(config)
    tokenizer_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if tokenizer_source is None:
        raise ValueError("With --preset, give --tokenizer_name_or_path (a folder with the text model's vocab.txt).")
    processor = load_processor(tokenizer_source, model.config, max_length)
    model, counts = apply_training_mode(model, model_args)
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, processor, counts


def load_processor(source: str, config, max_length: int | None = None):
    """The processor saved in `source`, or one built from its tokenizer files and the model's sizes.

    `max_length` (the report length in tokens) replaces the processor's when given; a processor built here without
    it gets the reference's 128. The tokenizer's `model_max_length` is set to the same value.
    """
    from transformers import BertTokenizer

    from modeling_alta.configuration_alta import check_pretrained_source
    from modeling_alta.image_processing_alta import AltaImageProcessor
    from modeling_alta.processing_alta import AltaProcessor

    check_pretrained_source(source, "tokenizer")
    folder = Path(source)
    if (folder / "processor_config.json").is_file():
        processor = AltaProcessor.from_pretrained(source)
        if max_length is not None:
            processor.max_length = int(max_length)
    else:
        processor = AltaProcessor(
            image_processor=AltaImageProcessor.for_vision_config(config.vision_config),
            tokenizer=BertTokenizer.from_pretrained(source),
            max_length=max_length,
        )
    processor.tokenizer.model_max_length = processor.max_length
    return processor


def _backbone_trainable(model, method: str) -> None:
    """`mae`/`backbone`: adapters off, the towers trainable, without the heads of the losses that are off (they would
    get no gradient, and a count of trainable parameters should not include them): in `mae` the contrastive heads
    and scales; with a zero weight, the MAE decoder (reconstruction), the MLM head and the image conditioning (MLM),
    the local heads and scales (local loss). The MLM head's output matrix is the word embedding (tied) and stays."""
    model.set_adapters_enabled(False)
    unused = set()
    for module in model.alta_adapters():
        unused.update(id(p) for p in module.parameters())
    alta, config = model.alta, model.config
    heads, scales = [], []
    if method == "mae" or config.contrastive_loss_weight <= 0:
        heads += [alta.vision_projection, alta.text_projection]
        scales += ["logit_scale"]
    if method == "mae" or config.local_loss_weight <= 0:
        heads += [alta.vision_local_projection, alta.text_local_projection]
        scales += ["logit_scale_local1", "logit_scale_local2", "logit_scale_local3"]
    if config.reconstruction_loss_weight <= 0:
        heads.append(model.decoder)
    if config.mlm_loss_weight <= 0:
        heads += [model.mlm_head, model.bert_embed]
    for head in heads:
        unused.update(id(p) for p in head.parameters())
    unused.update(id(getattr(alta, name)) for name in scales)
    unused -= {id(p) for p in alta.text_model.parameters()}  # the tied word embedding trains with the text tower
    frozen_buffers = {
        id(alta.vision_model.embeddings.position_embedding),
        id(alta.vision_model.embeddings.missing_token),
        id(model.decoder.position_embedding),
    }
    for param in model.parameters():
        param.requires_grad_(id(param) not in unused and id(param) not in frozen_buffers)


def apply_training_mode(model, model_args: ModelArguments) -> tuple[Any, dict[str, int]]:
    """Set `requires_grad` for the chosen method; return the model (a `PeftModel` for lora/ia3) and the counts."""
    from .peft_utils import apply_adapter_method

    method = model_args.adapter
    if method == "alta":
        model.set_adapters_enabled(True)
        return model, model.freeze_backbone()
    if method == "full":
        return apply_adapter_method(model, "full"), model.num_trainable_parameters()
    if method in ("mae", "backbone"):
        _backbone_trainable(model, method)
        return model, model.num_trainable_parameters()
    peft_model = apply_adapter_method(
        model, method, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return peft_model, {"trainable": trainable, "total": model.num_trainable_parameters()["total"]}


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------


def _fused_adamw_devices() -> list[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch that moved the helper: the devices it has had since fused AdamW exists
        return ["cpu", "cuda"]
    return list(_get_fused_kernels_supported_devices())


def build_optimizer(
    model, args: AlignArguments, world_size: int, device: torch.device | None = None
) -> tuple[torch.optim.Optimizer, float]:
    """AdamW with the reference's groups (no decay on biases and tensors of at most one dimension) and the peak
    learning rate (`--learning_rate`, or `--base_learning_rate` scaled by the effective batch / 256).

    `--optim adamw_torch_fused` (the default) runs torch's fused kernel, `adamw_torch` its for-loop. A loaded
    optimizer state keeps the implementation chosen now (torch would otherwise restore the saved one with the saved
    groups); resuming with another one is refused unless inexact resumes are allowed (`run_settings` records it).
    `device` is where training will run (the parameters may still be elsewhere): a device without the fused kernel
    is refused here, naming `--optim`, rather than at the first step."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    peak = args.learning_rate if args.learning_rate is not None else args.base_learning_rate * effective / 256
    fused = True if getattr(args, "optim", "adamw_torch") == "adamw_torch_fused" else None
    if fused and device is not None and torch.device(device).type not in _fused_adamw_devices():
        raise ValueError(
            f"--optim adamw_torch_fused: torch has no fused AdamW for the device {str(device)!r} (it has one for "
            f"{', '.join(_fused_adamw_devices())}); pass --optim adamw_torch."
        )
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=fused,
    )

    def keep_implementation(opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["fused"], group["foreach"] = fused, None

    optimizer.register_load_state_dict_post_hook(keep_implementation)
    return optimizer, peak


def learning_rate_at(step: float, peak: float, warmup: float, total: float, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then half-cycle cosine to `floor` at `total` steps."""
    if step < warmup:
        return peak * step / max(warmup, 1e-12)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1e-12))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def alta_config_of(model):
    """The `AltaConfig` of a model however it is wrapped (DDP, PEFT, compile)."""
    return unwrap_alta_model(model, "alta").config


__all__ = [
    "alta_config_of",
    "apply_training_mode",
    "build_accelerator",
    "build_model",
    "build_optimizer",
    "learning_rate_at",
    "load_processor",
    "trackers",
]
