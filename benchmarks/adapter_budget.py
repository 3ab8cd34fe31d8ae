"""Trainable parameters and adapter file size of `alta`, `lora`, `ia3` (and `full`) at a given preset size.

    python benchmarks/adapter_budget.py              # alta-base: 242M parameters, random weights, CPU, ~1 min
    python benchmarks/adapter_budget.py --preset alta-tiny

`alta` is the native adapter set (`save_alta_adapter`), `lora`/`ia3` the PEFT presets of `training/peft_utils.py`
(`PeftModel.save_pretrained`), `full` the whole model (`save_pretrained`). Sizes are the weight files in fp32;
the `alta` save time includes hashing the frozen base for the fingerprint;
trainable counts are over de-duplicated parameters; PEFT's `modules_to_save` (the four projection heads) count once,
as the trained copy that the file holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration import load_preset  # noqa: E402
from modeling_alta import AltaForPreTraining  # noqa: E402
from modeling_alta.adapters_alta import AltaAdapterMixin  # noqa: E402
from training.peft_utils import apply_adapter_method  # noqa: E402


def _model_class() -> type:
    if issubclass(AltaForPreTraining, AltaAdapterMixin):
        return AltaForPreTraining
    return type("AltaForPreTraining", (AltaAdapterMixin, AltaForPreTraining), {})  # until the mixin is merged


def measure(preset: str, methods: tuple[str, ...]) -> list[dict]:
    rows = []
    for method in methods:
        torch.manual_seed(0)
        cls = _model_class() if method == "alta" else AltaForPreTraining
        model = cls(load_preset(preset))
        total = sum(p.numel() for p in model.parameters())
        model = apply_adapter_method(model, method)
        # Count over the original parameters: PEFT's modules_to_save copies replace (not add to) their originals.
        trainable = sum(
            p.numel() for n, p in model.named_parameters() if p.requires_grad and "original_module" not in n
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            if method == "alta":
                model.save_alta_adapter(tmp)
                weights = Path(tmp) / "adapter_model.safetensors"
            elif method == "full":
                model.save_pretrained(tmp)
                weights = Path(tmp) / "model.safetensors"
            else:
                model.save_pretrained(tmp)
                weights = Path(tmp) / "adapter_model.safetensors"
            seconds = time.perf_counter() - start
            size = weights.stat().st_size
        rows.append(
            {
                "method": method,
                "trainable": trainable,
                "total": total,
                "file": weights.name,
                "bytes": size,
                "save_s": seconds,
            }
        )
    return rows


def format_table(preset: str, rows: list[dict]) -> str:
    lines = [
        f"{preset}: trainable parameters and adapter file size (fp32)",
        "",
        "| method | trainable | share of base | file | size | save time |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        share = 100.0 * r["trainable"] / r["total"]
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {share:.3f} % | {r['file']} | {r['bytes'] / 2**20:.1f} MiB ({r['bytes']:,} B) | {r['save_s']:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="alta-base")
    parser.add_argument("--methods", nargs="+", default=["alta", "lora", "ia3", "full"])
    args = parser.parse_args(argv)
    rows = measure(args.preset, tuple(args.methods))
    print(format_table(args.preset, rows))
    return rows


if __name__ == "__main__":
    main()
