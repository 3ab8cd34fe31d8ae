"""Convert the official ALTA / MRM checkpoints into a folder loadable with `AutoModel.from_pretrained`.

This module is the one place that knows the official key layout (github.com/DopamineLcy/ALTA, `model.py`):

    alta-convert --checkpoint ALTA.pth --text-model BiomedVLP-CXR-BERT-specialized/ --output alta-converted/
    alta-convert --checkpoint MRM.pth  --text-model BiomedVLP-CXR-BERT-specialized/ --output alta-from-mrm/

* `ALTA.pth` (the released aligned model: vision, decoder, adapters, `bert_encoder.*`) is detected by its
  `bert_encoder.` keys; the text model folder then only supplies the tokenizer and the text config.
* `MRM.pth` (the masked-record-modeling vision checkpoint) has no adapters, slot embeddings, heads or text: the
  adapters start at zero (identity), so the vision tower equals a plain ViT with the MRM weights; the text tower,
  its CLS head and MLM head come from the CXR-BERT folder, and the text local head is a copy of the CLS head (as
  the reference initialises it).

Checkpoint files are read with `torch.load(weights_only=True)`, never with code execution. Training-format files, as
the MAE / MRM / ALTA `save_model` writes them (`{'model', 'optimizer', 'epoch', 'name', 'scaler', 'args'}` with `args`
an `argparse.Namespace`), need a few plain classes besides tensors; those (`TRAINING_CHECKPOINT_GLOBALS`) are allowed
inside a `torch.serialization.safe_globals` block for that one load, never globally. Any other global is refused, with
the file and the global named. Only `model` is converted; the epoch, the run name, the recipe values in `args`, and a
summary of the optimizer and loss-scaler state go into `conversion_report.json`.

Every size is read from the checkpoint and the text config. Attention-head counts are not recoverable from weights:
give them with `--vision-num-attention-heads`/`--decoder-num-attention-heads`. Without the flags they default to a
head width of 64 (encoder) and 128 (decoder), as in ViT-B/16 and the MRM decoder, and the log and the report say so;
where a width is not a multiple of that, the command stops and names every flag it needs. Every source key is either
used or reported; the command fails on an unused key unless `--allow-unused` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


logger = logging.getLogger("alta.convert")

_VISION_RENAMES = [
    (r"^cls_token$", "alta.vision_model.embeddings.cls_token"),
    (r"^pos_embed$", "alta.vision_model.embeddings.position_embedding"),
    (r"^missing_token$", "alta.vision_model.embeddings.missing_token"),
    (r"^view_embedding$", "alta.vision_model.embeddings.view_embedding"),
    (r"^temporal_embedding$", "alta.vision_model.embeddings.temporal_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"alta.vision_model.embeddings.patch_embed.\1"),
    (r"^blocks\.(\d+)\.(attn|mlp)_adapter\.D_fc1\.", r"alta.vision_model.layers.\1.\2_adapter.down_proj."),
    (r"^blocks\.(\d+)\.(attn|mlp)_adapter\.D_fc2\.", r"alta.vision_model.layers.\1.\2_adapter.up_proj."),
    (r"^blocks\.(\d+)\.", r"alta.vision_model.layers.\1."),
    (r"^norm\.", "alta.vision_model.norm."),
    (r"^projection_head\.", "alta.vision_projection."),
    (r"^local_projection_head\.", "alta.vision_local_projection."),
    (r"^(logit_scale(_local[123])?)$", r"alta.\1"),
    (r"^bert_embed\.", "bert_embed."),
    (r"^decoder_embed\.", "decoder.decoder_embed."),
    (r"^mask_token$", "decoder.mask_token"),
    (r"^decoder_pos_embed$", "decoder.position_embedding"),
    (r"^decoder_blocks\.(\d+)\.", r"decoder.layers.\1."),
    (r"^decoder_norm\.", "decoder.decoder_norm."),
    (r"^decoder_pred\.", "decoder.decoder_pred."),
]
# Keys of a (CXR-)BERT masked-LM checkpoint, after an optional `bert_encoder.` prefix has been removed.
_TEXT_RENAMES = [
    (r"^bert\.embeddings\.", "alta.text_model.embeddings."),
    (
        r"^bert\.encoder\.layer\.(\d+)\.(attn|mlp)_adapter\.D_fc1\.",
        r"alta.text_model.encoder.layer.\1.\2_adapter.down_proj.",
    ),
    (
        r"^bert\.encoder\.layer\.(\d+)\.(attn|mlp)_adapter\.D_fc2\.",
        r"alta.text_model.encoder.layer.\1.\2_adapter.up_proj.",
    ),
    (r"^bert\.encoder\.layer\.", "alta.text_model.encoder.layer."),
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.transform.LayerNorm."),
    (r"^cls\.predictions\.bias$", "mlm_head.bias"),
    (r"^cls_projection_head\.", "alta.text_projection."),
    (r"^local_projection_head\.", "alta.text_local_projection."),
]
# Source keys that hold copies of other tensors: checked for equality, then reported as "tied".
_TIED_TEXT_KEYS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
_IGNORED_TEXT_KEYS = (re.compile(r"^bert\.embeddings\.position_ids$"), re.compile(r"^bert\.pooler\."))


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def map_official_key(key: str) -> str | None:
    """Official ALTA/MRM state-dict key -> this package's `AltaForPreTraining` key (None if unknown or tied)."""
    if key.startswith("bert_encoder."):
        return _rename(key[len("bert_encoder.") :], _TEXT_RENAMES)
    return _rename(key, _VISION_RENAMES)


# Plain classes a training-format checkpoint holds besides tensors and builtins: `args` is an `argparse.Namespace`
# (MAE/MRM/ALTA `save_model`), whose values may include paths. Rebuilding them sets attributes or parts; nothing is
# imported or called beyond these constructors.
TRAINING_CHECKPOINT_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    pathlib.PosixPath,
    pathlib.WindowsPath,
)
# Keys of a training-format checkpoint that hold the weights, in the order they are looked for.
_WEIGHT_KEYS = ("model", "state_dict", "module")
# `args` entries shown in the one-line summary when present (the full `args` goes into the report).
_SUMMARY_ARGS = ("model", "batch_size", "epochs", "max_epochs", "blr", "lr", "mask_ratio", "norm_pix_loss")
# Head widths behind the default head counts: ViT-B/16 (768 / 12) and the MRM decoder (768 / 6).
DEFAULT_HEAD_WIDTH = {"vision": 64, "decoder": 128}
_HEAD_FLAGS = {"vision": "--vision-num-attention-heads", "decoder": "--decoder-num-attention-heads"}


class UnsafeCheckpointError(ValueError):
    """A checkpoint needs globals outside the allowlist to be unpickled; it was not loaded."""


@dataclass
class CheckpointContents:
    """What a checkpoint file held: the weights, and a description of everything else (never executed)."""

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str  # "safetensors", "state_dict" (bare), "wrapped" ({'model': ...}) or "training" (with optimizer, ...)
    weights_key: str | None = None
    other_keys: list[str] = field(default_factory=list)
    epoch: Any = None
    name: Any = None
    args: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "format": self.format, "weights_key": self.weights_key}
        if self.other_keys:
            out["other_keys"] = self.other_keys
        for key in ("epoch", "name", "args", "optimizer", "scaler"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.extra:
            out["extra"] = self.extra
        return out

    def summary(self) -> str:
        """One line: the format and, for a training checkpoint, its epoch, name and main recipe values."""
        parts = [f"{self.format} checkpoint"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.name is not None:
            parts.append(f"name {self.name!r}")
        if self.args:
            recipe = [f"{k}={self.args[k]}" for k in _SUMMARY_ARGS if k in self.args]
            parts.append(f"args: {', '.join(recipe) if recipe else str(len(self.args)) + ' values'}")
        if self.optimizer is not None:
            parts.append(f"optimizer state of {self.optimizer.get('param_groups', '?')} group(s) ignored")
        return ", ".join(parts)


@dataclass
class HeadCount:
    """An attention-head count and where it came from."""

    value: int
    origin: str
    default: bool

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "origin": self.origin, "default": self.default}

    def describe(self) -> str:
        return f"{self.value} ({'DEFAULT: ' if self.default else ''}{self.origin})"


@dataclass
class ConversionReport:
    """What happened to every source key, what else the file held, and where each head count came from."""

    used: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)
    kind: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    source_summary: str = ""
    attention_heads: dict[str, HeadCount] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "summary": self.source_summary,
            "source": self.source,
            "attention_heads": {k: v.to_dict() for k, v in self.attention_heads.items()},
            "used": len(self.used),
            "tied_checked": self.tied,
            "ignored": self.ignored,
            "unused": self.unused,
            "initialised_fresh": self.initialised,
            "derived": self.derived,
        }

    def heads_line(self) -> str:
        return ", ".join(f"{tower} {count.describe()}" for tower, count in self.attention_heads.items())


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy of a value found in a checkpoint (paths as strings, tensors summarised)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() == 1 else f"tensor{tuple(value.shape)}"
    return repr(value)


def _global_names(classes: tuple[type, ...]) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in classes]


def _torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)` with the training-format classes allowed for this one call."""
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: nothing can be allowed in a scoped way
        return torch.load(str(path), map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(list(TRAINING_CHECKPOINT_GLOBALS)):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            unsafe = _unsafe_globals(path, err)
            if unsafe:
                raise UnsafeCheckpointError(
                    f"Refusing to load {path}: it needs the global(s) {unsafe}, which are not plain weights or one of "
                    f"the allowed training-checkpoint classes {_global_names(TRAINING_CHECKPOINT_GLOBALS)}. Loading "
                    "it would import and call them (arbitrary code); it was not loaded. Re-save the weights alone "
                    "(`torch.save(ckpt['model'], ...)` or safetensors) from a trusted environment."
                ) from None
            raise ValueError(f"Could not read {path} as a PyTorch checkpoint with weights_only=True: {err}") from err


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The globals of `path` outside the allowlist (called inside the `safe_globals` block), without loading it."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None:
        try:
            return list(finder(str(path)))
        except Exception:  # noqa: BLE001 - fall back to the message of the refused load
            pass
    return re.findall(r"GLOBAL ([\w.]+)", str(err))


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a `.pth`/`.bin` (with `weights_only=True`) or `.safetensors` file: the weights and what else it held.

    Accepted layouts: a bare state dict; `{'model' | 'state_dict' | 'module': state_dict, ...}`, e.g. the training
    format `{'model', 'optimizer', 'epoch', 'name', 'scaler', 'args'}`. Only the weights are used.

    Raises:
        `FileNotFoundError` for a missing file, `UnsafeCheckpointError` (a `ValueError`) for a file that needs
        non-allowed globals (it is never unpickled), `ValueError` for anything else unreadable; each names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return CheckpointContents(path=str(path), state_dict=dict(load_file(str(path))), format="safetensors")
    try:
        obj = _torch_load(path)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"Could not read {path} as a PyTorch checkpoint with weights_only=True: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__}).")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return CheckpointContents(path=str(path), state_dict=dict(obj), format="state_dict")
    weights_key = next((k for k in _WEIGHT_KEYS if isinstance(obj.get(k), dict)), None)
    if weights_key is None:
        raise ValueError(
            f"{path} holds neither a state dict nor one under {list(_WEIGHT_KEYS)}; its top-level keys are "
            f"{sorted(map(str, obj))[:20]}."
        )
    weights = obj[weights_key]
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entry {weights_key!r} is not a state dict of tensors (e.g. key {bad[0]!r}).")
    others = {k: v for k, v in obj.items() if k != weights_key}
    contents = CheckpointContents(
        path=str(path),
        state_dict=dict(weights),
        format="training" if others else "wrapped",
        weights_key=weights_key,
        other_keys=sorted(map(str, others)),
    )
    for key, value in others.items():
        if key == "epoch":
            contents.epoch = _plain(value)
        elif key == "name":
            contents.name = _plain(value)
        elif key == "args":
            contents.args = _plain(vars(value) if isinstance(value, argparse.Namespace) else value)
        elif key == "optimizer" and isinstance(value, dict):
            groups = value.get("param_groups") or []
            contents.optimizer = {
                "param_groups": len(groups),
                "state_entries": len(value.get("state") or {}),
                "hyperparameters": [_plain({k: v for k, v in g.items() if k != "params"}) for g in groups],
            }
        elif key == "scaler":
            contents.scaler = _plain(value)
        else:
            contents.extra[str(key)] = _plain(value) if not isinstance(value, dict) else f"dict of {len(value)}"
    return contents


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file (see `read_checkpoint`)."""
    return read_checkpoint(path).state_dict


def load_text_folder(text_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Read a CXR-BERT folder: its `config.json` and, when present, its weights."""
    text_dir = Path(text_dir)
    config_path = text_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{text_dir} has no config.json (expected a CXR-BERT folder)")
    if not (text_dir / "vocab.txt").is_file() and not (text_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{text_dir} has neither vocab.txt nor tokenizer.json: the tokenizer cannot be built")
    config = json.loads(config_path.read_text())
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (text_dir / name).is_file():
            weights = load_state_dict(text_dir / name)
            break
    return config, weights


def _layer_count(keys: list[str], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices and indices != set(range(max(indices) + 1)):
        raise ValueError(f"Non-contiguous layers under {prefix!r}: {sorted(indices)}")
    return len(indices)


def choose_heads(widths: dict[str, int | None], explicit: dict[str, int | None]) -> dict[str, HeadCount]:
    """Head counts for the vision encoder and the decoder: the flags where given, else `width / head width` (64 and
    128), marked as defaults. A width of None means the part is not in the checkpoint (the config default is kept).

    Raises:
        `ValueError` naming every flag needed when a count is missing and cannot be defaulted.
    """
    heads: dict[str, HeadCount] = {}
    impossible: list[str] = []
    for part, width in widths.items():
        flag = _HEAD_FLAGS[part]
        given = explicit.get(part)
        if given is not None:
            if given < 1 or (width is not None and width % given):
                raise ValueError(f"{flag} {given} does not divide the {part} width {width} from the checkpoint.")
            heads[part] = HeadCount(given, flag, default=False)
            continue
        if width is None:
            continue
        head_width = DEFAULT_HEAD_WIDTH[part]
        if width % head_width or width < head_width:
            impossible.append(f"{part} width {width} is not a multiple of the default head width {head_width}")
            continue
        heads[part] = HeadCount(width // head_width, f"width {width} / default head width {head_width}", True)
    if impossible:
        needed = [_HEAD_FLAGS[p] for p in widths if explicit.get(p) is None and widths[p] is not None]
        defaulted = [
            f"without {_HEAD_FLAGS[p]}, {p} would default to {h.value}" for p, h in heads.items() if h.default
        ]
        raise ValueError(
            "Attention-head counts are not stored in the weights and cannot be inferred here: "
            + "; ".join(impossible)
            + f". Pass {' and '.join(needed)} with the counts the model was trained with"
            + (f" ({'; '.join(defaulted)} head(s), a guess)." if defaulted else ".")
        )
    return heads


_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)


def infer_config(
    vision_sd: dict[str, torch.Tensor],
    text_config: dict,
    text_sd: dict[str, torch.Tensor] | None,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    vision_layer_norm_eps: float = 1e-6,
    heads: dict[str, HeadCount] | None = None,
):
    """Build an `AltaConfig` whose every size comes from the checkpoint (and the text config for BERT).

    `heads`, when given, receives the chosen head counts and their origins (see `choose_heads`).
    """
    from modeling_alta.configuration_alta import AltaAdapterConfig, AltaConfig

    keys = list(vision_sd)
    for required in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if required not in vision_sd:
            raise ValueError(f"Not an ALTA/MRM vision checkpoint: key {required!r} is missing.")
    hidden = vision_sd["cls_token"].shape[-1]
    patch = vision_sd["patch_embed.proj.weight"].shape[-1]
    channels = vision_sd["patch_embed.proj.weight"].shape[1]
    num_patches = vision_sd["pos_embed"].shape[1] - 1
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid.")
    has_decoder = "decoder_embed.weight" in vision_sd
    dec_hidden = vision_sd["decoder_embed.weight"].shape[0] if has_decoder else None
    chosen = choose_heads(
        {"vision": hidden, "decoder": dec_hidden}, {"vision": vision_heads, "decoder": decoder_heads}
    )
    vision = {
        "hidden_size": hidden,
        "num_hidden_layers": _layer_count(keys, "blocks."),
        "num_attention_heads": chosen["vision"].value,
        "intermediate_size": vision_sd["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": channels,
        "layer_norm_eps": vision_layer_norm_eps,
    }
    if has_decoder:
        pred_out = vision_sd["decoder_pred.weight"].shape[0]
        recon_patch = int(round((pred_out / channels) ** 0.5))
        vision.update(
            decoder_hidden_size=dec_hidden,
            decoder_num_hidden_layers=_layer_count(keys, "decoder_blocks."),
            decoder_num_attention_heads=chosen["decoder"].value,
            decoder_intermediate_size=vision_sd["decoder_blocks.0.mlp.fc1.weight"].shape[0],
            reconstruction_patch_size=recon_patch,
            reconstruction_image_size=grid * recon_patch,
        )
    if "view_embedding" in vision_sd:
        vision["num_view_kinds"] = vision_sd["view_embedding"].shape[1]
        vision["num_times"] = vision_sd["temporal_embedding"].shape[1]
    text = {k: text_config[k] for k in _TEXT_KEYS if k in text_config}
    if text_sd is not None:
        word = text_sd.get("bert.embeddings.word_embeddings.weight")
        if word is not None and tuple(word.shape) != (text.get("vocab_size"), text.get("hidden_size")):
            raise ValueError(
                f"Text weights have word embeddings {tuple(word.shape)} but config.json says vocab_size="
                f"{text.get('vocab_size')}, hidden_size={text.get('hidden_size')}."
            )
        text_layers = _layer_count(list(text_sd), "bert.encoder.layer.")
        if text_layers and text_layers != text.get("num_hidden_layers"):
            raise ValueError(
                f"Text weights have {text_layers} layers but config.json says {text.get('num_hidden_layers')}."
            )
    projection = text_config.get("projection_size", 128)
    if "projection_head.dense_to_output.weight" in vision_sd:
        projection = vision_sd["projection_head.dense_to_output.weight"].shape[0]
    adapter_key = "blocks.0.attn_adapter.D_fc1.weight"
    adapter = AltaAdapterConfig()
    if adapter_key in vision_sd:
        width = vision_sd[adapter_key].shape[0]
        if width != adapter.hidden_size_for(hidden):
            adapter = AltaAdapterConfig(bottleneck_size=width)
    config = AltaConfig(vision_config=vision, text_config=text, adapter_config=adapter, projection_dim=projection)
    if heads is not None:
        heads.update(chosen)
        if "decoder" not in chosen:
            heads["decoder"] = HeadCount(
                config.vision_config.decoder_num_attention_heads, "no decoder in the checkpoint: config default", True
            )
        if "num_attention_heads" in text_config:
            heads["text"] = HeadCount(text["num_attention_heads"], "text model config.json", default=False)
        else:
            heads["text"] = HeadCount(
                config.text_config.num_attention_heads, "not in the text config.json: BERT default", True
            )
    return config


def convert(
    checkpoint: str | Path,
    text_model: str | Path,
    output: str | Path,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    allow_unused: bool = False,
) -> ConversionReport:
    """Convert `checkpoint` (+ the CXR-BERT folder `text_model`) and write a model folder to `output`.

    `conversion_report.json`, written last and atomically, marks a complete folder; it records what the checkpoint
    held besides the weights and where each attention-head count came from.
    """
    from modeling_alta.modeling_alta import AltaForPreTraining

    contents = read_checkpoint(checkpoint)
    source = contents.state_dict
    text_config, text_weights = load_text_folder(text_model)
    report = ConversionReport(source=contents.to_dict(), source_summary=contents.summary())
    is_alta = any(k.startswith("bert_encoder.") for k in source)
    report.kind = "alta" if is_alta else "mrm"
    vision_sd = {k: v for k, v in source.items() if not k.startswith("bert_encoder.")}
    if is_alta:
        text_sd = {k[len("bert_encoder.") :]: v for k, v in source.items() if k.startswith("bert_encoder.")}
    else:
        if text_weights is None:
            raise FileNotFoundError(
                f"{checkpoint} is a vision-only (MRM) checkpoint, so the text weights must come from {text_model}, "
                "which has neither model.safetensors nor pytorch_model.bin."
            )
        text_sd = dict(text_weights)
    config = infer_config(vision_sd, text_config, text_sd, vision_heads, decoder_heads, heads=report.attention_heads)
    for part, count in report.attention_heads.items():
        if count.default and part in ("vision", "decoder"):
            logger.warning(
                "%s attention heads: %d is a DEFAULT (%s), not read from %s; pass %s if the model was trained "
                "with another count (a wrong count converts without error but computes other features)",
                part,
                count.value,
                count.origin,
                checkpoint,
                _HEAD_FLAGS[part],
            )
    model = AltaForPreTraining(config)
    model.eval()
    target = model.state_dict()
    new_sd: dict[str, torch.Tensor] = {}

    def take(src_key: str, dst_key: str | None, value: torch.Tensor, origin: str) -> None:
        if dst_key is None or dst_key not in target:
            report.unused.append(f"{origin}:{src_key}")
            return
        if tuple(target[dst_key].shape) != tuple(value.shape):
            raise ValueError(
                f"Shape mismatch for {origin} key {src_key!r} -> {dst_key!r}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(target[dst_key].shape)}."
            )
        # The reference stores missing_token in float16 (zeros in practice); everything is float32 here.
        new_sd[dst_key] = value.to(target[dst_key].dtype)
        report.used.append(f"{origin}:{src_key}")

    for key, value in vision_sd.items():
        take(key, _rename(key, _VISION_RENAMES), value, "checkpoint")
    text_origin = "checkpoint" if is_alta else "text_model"
    for key, value in text_sd.items():
        if key in _TIED_TEXT_KEYS:
            source_key = _TIED_TEXT_KEYS[key]
            if source_key in text_sd and not torch.equal(text_sd[source_key], value):
                raise ValueError(f"{text_origin} key {key!r} should equal {source_key!r} (tied) but differs.")
            report.tied.append(f"{text_origin}:{key}")
            continue
        if any(p.match(key) for p in _IGNORED_TEXT_KEYS):
            report.ignored.append(f"{text_origin}:{key}")
            continue
        take(key, _rename(key, _TEXT_RENAMES), value, text_origin)
    if "alta.text_local_projection.dense_to_hidden.weight" not in new_sd:
        for name in (
            "dense_to_hidden.weight",
            "dense_to_hidden.bias",
            "LayerNorm.weight",
            "LayerNorm.bias",
            "dense_to_output.weight",
            "dense_to_output.bias",
        ):
            src = f"alta.text_projection.{name}"
            if src in new_sd:
                new_sd[f"alta.text_local_projection.{name}"] = new_sd[src].clone()
                report.derived[f"alta.text_local_projection.{name}"] = f"copy of {src}"

    if report.unused and not allow_unused:
        raise ValueError(
            f"{len(report.unused)} source keys have no destination (a silently dropped weight is a bug): "
            f"{report.unused[:20]}{' ...' if len(report.unused) > 20 else ''}. Pass --allow-unused to accept."
        )
    tied_target = "mlm_head.decoder.weight"
    missing = [k for k in target if k not in new_sd and k != tied_target]
    report.initialised = missing
    if is_alta and missing:
        raise ValueError(f"The ALTA checkpoint lacks weights the model needs: {missing}")
    incompatible = model.load_state_dict(new_sd, strict=False)
    unexpected = list(incompatible.unexpected_keys)
    if unexpected:
        raise ValueError(f"Internal error: converted keys not in the model: {unexpected}")
    model.tie_weights()

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    _save_processor(text_model, output, config)
    _write_json_atomic(output / "conversion_report.json", report.to_dict())
    return report


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_processor(text_model: str | Path, output: Path, config) -> None:
    from transformers import BertTokenizer

    from modeling_alta.image_processing_alta import AltaImageProcessor
    from modeling_alta.processing_alta import DEFAULT_MAX_LENGTH, AltaProcessor

    tokenizer = BertTokenizer.from_pretrained(str(text_model))
    # The reference trains and evaluates with 128-token reports; the processor carries that length.
    tokenizer.model_max_length = DEFAULT_MAX_LENGTH
    image_processor = AltaImageProcessor.for_vision_config(config.vision_config)
    # AltaProcessor.save_pretrained also writes preprocessor_config.json for AutoImageProcessor.
    AltaProcessor(image_processor=image_processor, tokenizer=tokenizer, max_length=DEFAULT_MAX_LENGTH).save_pretrained(
        output
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alta-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="ALTA.pth (released model) or MRM.pth (vision only): a state dict, {'model': ...}, or a training "
        "checkpoint {'model', 'optimizer', 'epoch', 'scaler', 'args', ...} (only 'model' is converted)",
    )
    parser.add_argument("--text-model", required=True, help="CXR-BERT folder: config.json, vocab.txt, weights")
    parser.add_argument("--output", required=True, help="Folder to write (config, model.safetensors, processor)")
    parser.add_argument(
        "--vision-num-attention-heads",
        type=int,
        default=None,
        help="Heads of the ViT encoder (not stored in the weights; default: width / 64, reported as a default)",
    )
    parser.add_argument(
        "--decoder-num-attention-heads",
        type=int,
        default=None,
        help="Heads of the MAE decoder (not stored in the weights; default: width / 128, reported as a default)",
    )
    parser.add_argument("--allow-unused", action="store_true", help="Report unknown source keys instead of failing")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = convert(
            args.checkpoint,
            args.text_model,
            args.output,
            vision_heads=args.vision_num_attention_heads,
            decoder_heads=args.decoder_num_attention_heads,
            allow_unused=args.allow_unused,
        )
    except (ValueError, FileNotFoundError) as err:
        logger.error("alta-convert: error: %s", err)
        return 1
    logger.info(
        "converted %s %s (%s): %d keys used, %d tied (checked equal), %d ignored, %d unused, %d freshly initialised; "
        "attention heads: %s -> %s",
        report.kind,
        args.checkpoint,
        report.source_summary,
        len(report.used),
        len(report.tied),
        len(report.ignored),
        len(report.unused),
        len(report.initialised),
        report.heads_line(),
        args.output,
    )
    for key in report.unused:
        logger.warning("unused source key: %s", key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
