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

Every size is read from the checkpoint and the text config; attention-head counts are not recoverable from
weights and default to a head width of 64 (encoder) and 128 (decoder), as in ViT-B/16 + the MRM decoder, or are
given with `--vision-num-attention-heads`/`--decoder-num-attention-heads`. Every source key is either used or
reported; the command fails on an unused key unless `--allow-unused` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class ConversionReport:
    """What happened to every source key."""

    used: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)
    kind: str = ""

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "used": len(self.used),
            "tied_checked": self.tied,
            "ignored": self.ignored,
            "unused": self.unused,
            "initialised_fresh": self.initialised,
            "derived": self.derived,
        }


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.bin` (with `weights_only=True`; a top-level `model` or `state_dict` entry is unwrapped) or a
    `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"Could not read {path} as a PyTorch checkpoint with weights_only=True: {err}") from err
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__}).")
    return obj


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


def _heads(hidden: int, explicit: int | None, head_dim: int, what: str) -> int:
    if explicit is not None:
        return explicit
    if hidden % head_dim or hidden < head_dim:
        raise ValueError(
            f"Cannot infer the {what} attention heads for width {hidden} (not a multiple of {head_dim}); pass "
            f"--{what}-num-attention-heads."
        )
    return hidden // head_dim


def infer_config(
    vision_sd: dict[str, torch.Tensor],
    text_config: dict,
    text_sd: dict[str, torch.Tensor] | None,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    vision_layer_norm_eps: float = 1e-6,
):
    """Build an `AltaConfig` whose every size comes from the checkpoint (and the text config for BERT)."""
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
    depth = _layer_count(keys, "blocks.")
    vision = {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": _heads(hidden, vision_heads, 64, "vision"),
        "intermediate_size": vision_sd["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": channels,
        "layer_norm_eps": vision_layer_norm_eps,
    }
    if "decoder_embed.weight" in vision_sd:
        dec_hidden = vision_sd["decoder_embed.weight"].shape[0]
        pred_out = vision_sd["decoder_pred.weight"].shape[0]
        recon_patch = int(round((pred_out / channels) ** 0.5))
        vision.update(
            decoder_hidden_size=dec_hidden,
            decoder_num_hidden_layers=_layer_count(keys, "decoder_blocks."),
            decoder_num_attention_heads=_heads(dec_hidden, decoder_heads, 128, "decoder"),
            decoder_intermediate_size=vision_sd["decoder_blocks.0.mlp.fc1.weight"].shape[0],
            reconstruction_patch_size=recon_patch,
            reconstruction_image_size=grid * recon_patch,
        )
    if "view_embedding" in vision_sd:
        vision["num_view_kinds"] = vision_sd["view_embedding"].shape[1]
        vision["num_times"] = vision_sd["temporal_embedding"].shape[1]
    text = {
        k: text_config[k]
        for k in (
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
        if k in text_config
    }
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
    return AltaConfig(vision_config=vision, text_config=text, adapter_config=adapter, projection_dim=projection)


def convert(
    checkpoint: str | Path,
    text_model: str | Path,
    output: str | Path,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    allow_unused: bool = False,
) -> ConversionReport:
    """Convert `checkpoint` (+ the CXR-BERT folder `text_model`) and write a model folder to `output`."""
    from modeling_alta.modeling_alta import AltaForPreTraining

    source = load_state_dict(checkpoint)
    text_config, text_weights = load_text_folder(text_model)
    report = ConversionReport()
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
    config = infer_config(vision_sd, text_config, text_sd, vision_heads, decoder_heads)
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
    (output / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _save_processor(text_model: str | Path, output: Path, config) -> None:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(text_model))
    tokenizer.model_max_length = config.text_config.max_length
    from modeling_alta.image_processing_alta import AltaImageProcessor
    from modeling_alta.processing_alta import AltaProcessor

    image_processor = AltaImageProcessor.for_vision_config(config.vision_config)
    # AltaProcessor.save_pretrained also writes preprocessor_config.json for AutoImageProcessor.
    AltaProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alta-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="ALTA.pth (released model) or MRM.pth (vision only)")
    parser.add_argument("--text-model", required=True, help="CXR-BERT folder: config.json, vocab.txt, weights")
    parser.add_argument("--output", required=True, help="Folder to write (config, model.safetensors, processor)")
    parser.add_argument("--vision-num-attention-heads", type=int, default=None)
    parser.add_argument("--decoder-num-attention-heads", type=int, default=None)
    parser.add_argument("--allow-unused", action="store_true", help="Report unknown source keys instead of failing")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    report = convert(
        args.checkpoint,
        args.text_model,
        args.output,
        vision_heads=args.vision_num_attention_heads,
        decoder_heads=args.decoder_num_attention_heads,
        allow_unused=args.allow_unused,
    )
    summary = report.to_dict()
    logger.info(
        "converted %s checkpoint: %d keys used, %d tied (checked equal), %d ignored, %d unused, %d freshly "
        "initialised -> %s",
        summary["kind"],
        summary["used"],
        len(report.tied),
        len(report.ignored),
        len(report.unused),
        len(report.initialised),
        args.output,
    )
    for key in report.unused:
        logger.warning("unused source key: %s", key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
