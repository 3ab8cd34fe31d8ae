"""Parameter-efficient methods on ALTA: the native ALTA adapter set, PEFT's LoRA and IA3, or full fine-tuning.

`apply_adapter_method(model, method)` is what `training/align.py --adapter alta|lora|ia3|full` calls. LoRA and IA3
go through `peft.get_peft_model` with the target names below (PEFT's registry is closed, so ALTA's own adapters
stay native; see `modeling_alta/adapters_alta.py`).

Target modules (in-memory names of `modeling_alta.py`, matched as full-name regexes so that the MAE decoder, whose
blocks reuse the ViT names, is never targeted):

| tower | attention | MLP |
|---|---|---|
| vision (`vision_model.layers.N.`) | `attn.qkv` (fused q/k/v), `attn.proj` | `mlp.fc1`, `mlp.fc2` |
| text (`text_model.encoder.layer.N.`) | `attention.self.query/key/value`, `attention.output.dense` | `intermediate.dense`, `output.dense` |

Presets:
- LoRA: every attention and MLP Linear of both towers, `r=8`, `alpha=16`.
- IA3 (the paper's choice): keys, values and the second feed-forward layer. The vision qkv is fused, so its IA3
  vector scales q, k and v; the feed-forward modules (`mlp.fc2`, `output.dense`) scale their input.
- Both train the four projection heads as PEFT `modules_to_save` (the image heads start untrained, so a frozen head
  would make the contrastive loss meaningless), and nothing else: the logit scales are bare parameters, which PEFT
  cannot save, so they stay at their initial value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn


logger = logging.getLogger(__name__)


ADAPTER_METHODS = ("alta", "lora", "ia3", "full")
TOWERS = ("vision", "text")
PLACEMENTS = ("attn", "mlp")
PROJECTION_HEADS = ("vision_projection", "vision_local_projection", "text_projection", "text_local_projection")

# Tower -> (block prefix regex, {placement: module-name regexes inside a block}).
_TOWER_LINEARS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "vision": (
        r"vision_model\.layers\.{layer}\.",
        {"attn": (r"attn\.qkv", r"attn\.proj"), "mlp": (r"mlp\.fc1", r"mlp\.fc2")},
    ),
    "text": (
        r"text_model\.encoder\.layer\.{layer}\.",
        {
            "attn": (
                r"attention\.self\.query",
                r"attention\.self\.key",
                r"attention\.self\.value",
                r"attention\.output\.dense",
            ),
            "mlp": (r"intermediate\.dense", r"output\.dense"),
        },
    ),
}
IA3_TARGETS = {
    "vision": (r"attn\.qkv", r"mlp\.fc2"),
    "text": (r"attention\.self\.key", r"attention\.self\.value", r"output\.dense"),
}
IA3_FEEDFORWARD = {"vision": (r"mlp\.fc2",), "text": (r"output\.dense",)}


def _check(name: str, values: Iterable[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"`{name}` must be a non-empty subset of {allowed}; got {list(values)}.")
    return values


def _layer_regex(layers: Iterable[int] | None) -> str:
    if layers is None:
        return r"\d+"
    layers = sorted({int(i) for i in layers})
    if not layers or layers[0] < 0:
        raise ValueError(f"`layers` must hold non-negative block indices; got {layers}.")
    return "(?:" + "|".join(str(i) for i in layers) + ")"


def alta_target_modules(
    towers: Iterable[str] = TOWERS,
    placement: Iterable[str] = PLACEMENTS,
    layers: Iterable[int] | None = None,
    names: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """A regex (PEFT full-matches it against module names) selecting the towers' Linear layers.

    Args:
        towers: `"vision"`, `"text"` or both.
        placement: `"attn"`, `"mlp"` or both (ignored when `names` is given).
        layers: block indices; `None` means every block.
        names: per-tower module-name regexes inside a block, overriding `placement` (e.g. IA3's key/value/fc2).

    Example: `alta_target_modules(("text",), ("attn",))` matches `...text_model.encoder.layer.3.attention.self.query`.
    """
    towers = _check("towers", towers, TOWERS)
    placement = _check("placement", placement, PLACEMENTS)
    layer = _layer_regex(layers)
    alternatives = []
    for tower in towers:
        block, by_place = _TOWER_LINEARS[tower]
        inner = names[tower] if names is not None else tuple(n for p in placement for n in by_place[p])
        if inner:
            alternatives.append(block.format(layer=layer) + "(?:" + "|".join(inner) + ")")
    # `(?:.*\.)?` allows any wrapper prefix (`alta.` in AltaForPreTraining, `base_model.model.` under PEFT).
    return r"(?:.*\.)?(?:" + "|".join(alternatives) + ")"


def lora_config_for_alta(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    towers: Iterable[str] = TOWERS,
    placement: Iterable[str] = PLACEMENTS,
    layers: Iterable[int] | None = None,
    train_heads: bool = True,
    **kwargs: Any,
):
    """A `peft.LoraConfig` for ALTA's towers (see the module docstring for the targets). Extra kwargs go to LoRA."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=alta_target_modules(towers, placement, layers),
        modules_to_save=list(PROJECTION_HEADS) if train_heads else None,
        **kwargs,
    )


def ia3_config_for_alta(
    towers: Iterable[str] = TOWERS,
    layers: Iterable[int] | None = None,
    train_heads: bool = True,
    **kwargs: Any,
):
    """A `peft.IA3Config` on keys, values and the second feed-forward layer of ALTA's towers."""
    from peft import IA3Config

    towers = _check("towers", towers, TOWERS)
    return IA3Config(
        target_modules=alta_target_modules(towers, layers=layers, names={t: IA3_TARGETS[t] for t in towers}),
        feedforward_modules=alta_target_modules(towers, layers=layers, names={t: IA3_FEEDFORWARD[t] for t in towers}),
        modules_to_save=list(PROJECTION_HEADS) if train_heads else None,
        **kwargs,
    )


# Parameters that no method trains: fixed sin-cos position tables and the missing-view token (alta_reference.md §4).
_NEVER_TRAINED = ("position_embedding", "missing_token")


def apply_adapter_method(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """Prepare `model` for training with `method`; returns the model to train (a `PeftModel` for lora/ia3).

    - `"alta"`: the native ALTA set (`model.freeze_backbone()`; kwargs: `groups`).
    - `"lora"` / `"ia3"`: `peft.get_peft_model(model, lora_config_for_alta(**kwargs) / ia3_config_for_alta(**kwargs))`.
      The ALTA adapters already in the model stay frozen (identity at init; a trained checkpoint keeps its own).
      **Use the returned `PeftModel`** (its `save_pretrained` writes the PEFT adapter). `alpha`/`dropout` are accepted
      for `lora_alpha`/`lora_dropout`, and the LoRA-only options (`r`, `alpha`, `dropout`) are dropped for IA3, so
      one call site can pass the same command-line options to both.
    - `"full"`: every parameter except the fixed sin-cos positions and the missing-view token.

    After any method, `model.clamp_logit_scales()` still works (a `PeftModel` forwards attributes).
    """
    if method not in ADAPTER_METHODS:
        raise ValueError(f"Unknown adapter method {method!r}; choose from {ADAPTER_METHODS}.")
    if method == "alta":
        model.freeze_backbone(kwargs.pop("groups", None))
        if kwargs:
            raise TypeError(f"`alta` takes only `groups`; got {sorted(kwargs)}.")
        return model
    if method == "full":
        if kwargs:
            raise TypeError(f"`full` takes no options; got {sorted(kwargs)}.")
        for name, param in model.named_parameters():
            param.requires_grad_(not any(part in name.split(".") for part in _NEVER_TRAINED))
        return model
    from peft import get_peft_model

    for alias, name in (("alpha", "lora_alpha"), ("dropout", "lora_dropout")):
        if alias in kwargs:
            if name in kwargs:
                raise TypeError(
                    f"Pass either `{alias}` or `{name}`, not both; got {kwargs[alias]} and {kwargs[name]}."
                )
            kwargs[name] = kwargs.pop(alias)
    if method == "ia3":
        dropped = {k: kwargs.pop(k) for k in ("r", "lora_alpha", "lora_dropout") if k in kwargs}
        if dropped:
            logger.info("IA3 has no rank, alpha or dropout; ignoring %s", dropped)
    model.requires_grad_(False)
    config = lora_config_for_alta(**kwargs) if method == "lora" else ia3_config_for_alta(**kwargs)
    return get_peft_model(model, config)


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """`{"trainable": n, "total": m}` over de-duplicated parameters (a PeftModel's `modules_to_save` copies count)."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"trainable": trainable, "total": total}


__all__ = [
    "ADAPTER_METHODS",
    "PROJECTION_HEADS",
    "alta_target_modules",
    "apply_adapter_method",
    "ia3_config_for_alta",
    "lora_config_for_alta",
    "trainable_summary",
]


def merge_peft_model(peft_model: nn.Module) -> nn.Module:
    """Fold a trained LoRA/IA3 `PeftModel` into a plain ALTA model (for a folder that loads without PEFT).

    The trained copies of `modules_to_save` (the projection heads) are put in place first: PEFT 0.21's IA3
    `merge_and_unload` fails on wrapped modules that are not Linear layers.
    """
    from peft.utils.other import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            adapter = module.active_adapters[0] if module.active_adapters else "default"
            setattr(parent, child, module.modules_to_save[adapter])
    return peft_model.merge_and_unload()
