"""Export an ALTA model's towers to ONNX for CPU serving with onnxruntime (`alta-export-onnx`).

optimum cannot export transformers-5 models, so this goes through `torch.onnx.export(..., dynamo=True)` (torch.export,
then onnxscript). Written into one folder::

    image.onnx       pixel_values [batch, 3, H, W]                          -> image_features [batch, P]
    study.onnx       pixel_values [batch, V, 3, H, W], view_mask [batch, V] -> image_features [batch, P]
    text.onnx        input_ids, attention_mask, token_type_ids [batch, seq] -> text_features [batch, P]
    processor files  the model's `AltaProcessor` (tokenizer + image processor), so inputs are prepared as for PyTorch
    alta_onnx.json   what was exported, the input/output names and sizes, and the parity measured at export

The features are the **unnormalised** projections of `get_image_features` / `get_text_features`; `image` is the
single-frontal path (the reference's evaluation path), `study` the multiview/temporal path with `view_mask`
(`V = num_slots`, slot order `STUDY_SLOTS`). The batch dimension (and the text length, up to the model's position
table) is dynamic; H, W and V are the model's. `alta_onnx.json` is written last, atomically, so a folder with it is
complete. `inference.onnx_encoder.OnnxAltaEncoder` embeds with these files.

    alta-export-onnx path/to/model --output path/to/onnx [--towers image study text] [--no-verify]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modeling_alta.configuration_alta import STUDY_SLOTS
from modeling_alta.processing_alta import encode_texts

from .embedding import default_text_length, load_model_and_processor


logger = logging.getLogger(__name__)

MANIFEST = "alta_onnx.json"
ONNX_FORMAT = "alta-onnx"
ONNX_VERSION = 1
TOWERS: tuple[str, ...] = ("image", "study", "text")
TEXT_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
# The parity bar of the issue; export fails when onnxruntime differs from PyTorch by more.
DEFAULT_ATOL = 1e-4


def _projection(output: Any) -> torch.Tensor:
    """The projected embedding from `get_image_features` / `get_text_features`: a tensor, or (transformers-5 CLIP
    style) an output object whose `pooler_output` holds it."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"expected a tensor or an output with `pooler_output`; got {type(output).__name__}")
    return pooled


# ---------------------------------------------------------------------------------------------------------------
# 1. The exported modules: one forward each, tensors in, tensor out
# ---------------------------------------------------------------------------------------------------------------


class AltaOnnxImageTower(nn.Module):
    """`pixel_values [B, 3, H, W]` -> `image_features [B, P]` (single frontal, unnormalised)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _projection(self.model.get_image_features(pixel_values))


class AltaOnnxStudyTower(nn.Module):
    """`pixel_values [B, V, 3, H, W]`, `view_mask [B, V]` bool -> `image_features [B, P]` (unnormalised)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        return _projection(self.model.get_image_features(pixel_values, view_mask=view_mask))


class AltaOnnxTextTower(nn.Module):
    """`input_ids`, `attention_mask`, `token_type_ids` `[B, L]` int64 -> `text_features [B, P]` (unnormalised)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return _projection(self.model.get_text_features(input_ids, attention_mask, token_type_ids))


# ---------------------------------------------------------------------------------------------------------------
# 2. Example inputs (sizes from the model's config and processor)
# ---------------------------------------------------------------------------------------------------------------

# Verification texts of different lengths, so padding and attention masks are exercised.
_EXAMPLE_TEXTS = (
    "Small left pleural effusion.",
    "The heart is enlarged. Mild interstitial edema without consolidation; no pneumothorax is seen.",
    "No acute cardiopulmonary process.",
)


def _image_size(model: Any) -> int:
    return int(model.config.vision_config.image_size)


def _num_slots(model: Any) -> int:
    return int(model.config.vision_config.num_slots)


def example_inputs(model: Any, processor: Any, tower: str, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of one tower for tracing and verification: standard-normal pixels (the processor's output scale),
    studies with a different missing-view pattern per row (the first row complete), tokenised example reports."""
    gen = torch.Generator().manual_seed(seed)
    size = _image_size(model)
    if tower == "image":
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=gen)}
    if tower == "study":
        slots = _num_slots(model)
        mask = torch.ones(batch, slots, dtype=torch.bool)
        for row in range(1, batch):
            mask[row, 1:] = torch.rand(slots - 1, generator=gen) < 0.5  # the frontal is always there
        pixels = torch.randn(batch, slots, 3, size, size, generator=gen) * mask[:, :, None, None, None]
        return {"pixel_values": pixels, "view_mask": mask}
    if tower == "text":
        tokenizer = getattr(processor, "tokenizer", processor)
        texts = [_EXAMPLE_TEXTS[i % len(_EXAMPLE_TEXTS)] for i in range(batch)]
        enc = encode_texts(tokenizer, texts, default_text_length(processor), return_tensors="pt")
        return {name: enc[name] for name in TEXT_INPUTS}
    raise ValueError(f"unknown tower {tower!r}; choose from {TOWERS}")


def _tower_module(model: Any, tower: str) -> nn.Module:
    modules = {"image": AltaOnnxImageTower, "study": AltaOnnxStudyTower, "text": AltaOnnxTextTower}
    return modules[tower](model).eval()


def _dynamic_shapes(model: Any, tower: str) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    if tower == "image":
        return {"pixel_values": {0: batch}}
    if tower == "study":
        return {"pixel_values": {0: batch}, "view_mask": {0: batch}}
    limit = int(model.config.text_config.max_position_embeddings)
    sequence = torch.export.Dim("sequence", min=2, max=limit)
    return {name: {0: batch, 1: sequence} for name in TEXT_INPUTS}


def _output_name(tower: str) -> str:
    return "text_features" if tower == "text" else "image_features"


# ---------------------------------------------------------------------------------------------------------------
# 3. Export and verification
# ---------------------------------------------------------------------------------------------------------------


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}; install them with `pip install onnx onnxscript onnxruntime` "
            "or the `onnx` extra (`pip install -e .[onnx]`)"
        )


def export_tower(
    model: Any,
    processor: Any,
    tower: str,
    path: str | os.PathLike,
    opset: int | None = None,
    external_data: bool = False,
    example_batch: int = 2,
) -> Path:
    """Export one tower to `path` (an `.onnx` file; with `external_data`, weights go to `<path>.data`).

    The batch dimension is dynamic (traced at `example_batch`, which must be at least 2: torch.export specialises a
    dimension of size 1), and for the text tower the sequence length too.
    """
    _require_onnx()
    if example_batch < 2:
        raise ValueError(f"`example_batch` must be at least 2 (a batch of 1 is specialised); got {example_batch}")
    inputs = example_inputs(model, processor, tower, example_batch)
    module = _tower_module(model, tower)
    path = Path(path)
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns when two inputs share a dynamic axis name (`batch`): that sharing is what is meant.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            dynamo=True,
            input_names=list(inputs),
            output_names=[_output_name(tower)],
            dynamic_shapes=_dynamic_shapes(model, tower),
            external_data=external_data,
            verbose=False,
            **kwargs,
        )
    return path


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in inputs.items()}


@torch.no_grad()
def verify_tower(
    model: Any, processor: Any, tower: str, path: str | os.PathLike, batches: Sequence[int] = (1, 3)
) -> float:
    """Largest absolute difference between onnxruntime and PyTorch features over example batches of several sizes
    (so the dynamic batch is exercised too)."""
    session = _session(Path(path))
    module = _tower_module(model, tower)
    worst = 0.0
    for i, batch in enumerate(batches):
        inputs = example_inputs(model, processor, tower, batch, seed=100 + i)
        expected = module(**inputs).float().numpy()
        got = session.run(None, _feeds(inputs))[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"{path}: onnxruntime returned shape {got.shape}; PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tower_spec(model: Any, tower: str, file: str) -> dict[str, Any]:
    size, slots, dim = _image_size(model), _num_slots(model), int(model.config.projection_dim)
    if tower == "image":
        inputs = {"pixel_values": {"shape": ["batch", 3, size, size], "dtype": "float32"}}
    elif tower == "study":
        inputs = {
            "pixel_values": {"shape": ["batch", slots, 3, size, size], "dtype": "float32"},
            "view_mask": {"shape": ["batch", slots], "dtype": "bool"},
        }
    else:
        inputs = {name: {"shape": ["batch", "sequence"], "dtype": "int64"} for name in TEXT_INPUTS}
    return {"file": file, "inputs": inputs, "output": {"name": _output_name(tower), "shape": ["batch", dim]}}


def export_onnx(
    model: Any,
    output_dir: str | os.PathLike,
    processor: Any = None,
    towers: Sequence[str] = TOWERS,
    opset: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    external_data: bool = False,
) -> dict[str, Any]:
    """Export the image, study and/or text towers of an ALTA model, with its processor, into `output_dir`.

    Args:
        model: a model folder, a Hub id, or a model instance (see `load_model_and_processor`).
        output_dir: the folder to write (created; files of a previous export are replaced).
        processor: its `AltaProcessor`; default: the one saved with the model.
        towers: any of `"image"`, `"study"`, `"text"`.
        opset: ONNX opset; default: the exporter's.
        verify: run each file with onnxruntime on example batches of several sizes and fail if it differs from
            PyTorch by more than `atol`; the differences are recorded in the manifest.
        external_data: keep weights in `<file>.onnx.data` (needed above 2 GB per file; ALTA's towers are smaller).

    Returns:
        the manifest written to `alta_onnx.json`.
    """
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        raise ValueError(f"`towers` must be a non-empty subset of {TOWERS}; got {list(towers)}")
    _require_onnx()
    model, processor = load_model_and_processor(model, processor)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest is written
    manifest: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "source": str(getattr(model, "name_or_path", "") or type(model).__name__),
        "projection_dim": int(model.config.projection_dim),
        "image_size": _image_size(model),
        "num_slots": _num_slots(model),
        "study_slots": list(STUDY_SLOTS[: _num_slots(model)]),
        "study_pooling": str(getattr(model.config.vision_config, "study_pooling", "all")),
        "text_max_length": default_text_length(processor),
        "max_position_embeddings": int(model.config.text_config.max_position_embeddings),
        "logit_scale": float(model.logit_scale.detach().float().exp()),
        "features": "unnormalised projections (get_image_features / get_text_features)",
        "torch": torch.__version__,
        "opset": opset,
        "towers": {},
        "max_abs_diff": {},
    }
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as staging:
        for tower in towers:
            file = f"{tower}.onnx"
            logger.info("exporting the %s tower to %s", tower, out / file)
            staged = export_tower(model, processor, tower, Path(staging) / file, opset, external_data)
            if verify:
                diff = verify_tower(model, processor, tower, staged)
                manifest["max_abs_diff"][tower] = diff
                if not diff <= atol:
                    raise RuntimeError(
                        f"the exported {tower} tower differs from PyTorch by {diff:.3g} (> {atol:g}); nothing was "
                        f"written to {out}"
                    )
            for produced in sorted(Path(staging).glob(f"{file}*")):  # the file and its external data, if any
                os.replace(produced, out / produced.name)
            manifest["towers"][tower] = _tower_spec(model, tower, file)
    processor.save_pretrained(out)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        image_processor.save_pretrained(out)
    try:
        import onnx

        manifest["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover - _require_onnx checked it
        pass
    _write_json_atomic(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# 4. CLI
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="alta-export-onnx",
        description="Export an ALTA model's image, study and text towers to ONNX (dynamic batch), with its processor.",
    )
    parser.add_argument("model", help="model folder (align.py's model/, save_pretrained, alta-convert) or Hub id")
    parser.add_argument("--output", required=True, help="folder to write the .onnx files and processor into")
    parser.add_argument("--towers", nargs="+", choices=TOWERS, default=list(TOWERS), help="default: all three")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="verification tolerance (%(default)s)")
    parser.add_argument("--external-data", action="store_true", help="weights in <file>.onnx.data files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    manifest = export_onnx(
        args.model,
        args.output,
        towers=args.towers,
        opset=args.opset,
        verify=not args.no_verify,
        atol=args.atol,
        external_data=args.external_data,
    )
    for tower, spec in manifest["towers"].items():
        diff = manifest["max_abs_diff"].get(tower)
        check = f"max |onnxruntime - torch| = {diff:.2e}" if diff is not None else "not verified"
        print(f"{tower:>5}: {Path(args.output) / spec['file']}  ({check})")
    print(f"wrote {Path(args.output) / MANIFEST}")
    return manifest


__all__ = [
    "MANIFEST",
    "TOWERS",
    "AltaOnnxImageTower",
    "AltaOnnxStudyTower",
    "AltaOnnxTextTower",
    "example_inputs",
    "export_onnx",
    "export_tower",
    "main",
    "verify_tower",
]


if __name__ == "__main__":
    main()
