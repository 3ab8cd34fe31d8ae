"""Image embedding on CPU: onnxruntime (the `alta-export-onnx` image tower) against PyTorch eager, paired.

Random weights at the `alta-base` size (ViT-B/16 at 224 with adapters). The image tower is exported with
`inference.onnx_export.export_tower` into a temporary folder, checked against PyTorch, and both run
`[B, 3, 224, 224] -> [B, 128]` for batch 1 and 8 in alternating rounds of the same process (best round for the
throughput, median of the per-round ratios for the speed-up; see `_common.py`). Both use the same number of threads
(`--threads`, default torch's choice; onnxruntime's intra-op pool is set to match).

    python benchmarks/bench_onnx.py                 # full size (a few minutes on a 2-core CPU)
    python benchmarks/bench_onnx.py --quick         # alta-tiny, one round, seconds (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import (
    add_common_arguments,
    base_config,
    interleaved_times,
    machine_lines,
    markdown_table,
    paired_median,
    setup,
)

from modeling_alta.modeling_alta import AltaModel


# Instruction-set flags that decide which kernels onnxruntime and torch can use.
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in CPU_FLAGS if flag in present) or "none of " + " ".join(CPU_FLAGS)
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="image batches (1 8)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per batch size (default: %(default)s)")
    args = parser.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_onnx compares CPU inference; run it with --device cpu")
    if args.quick:
        args.batch_sizes, args.rounds = [1, 2], 1

    import onnxruntime as ort

    from inference.onnx_export import AltaOnnxImageTower, export_tower

    config = base_config(args.quick)
    model = AltaModel(config).eval()
    tower = AltaOnnxImageTower(model).eval()  # what is exported, run eagerly: the same computation on both sides
    size = config.vision_config.image_size
    threads = torch.get_num_threads()
    results: dict[str, float] = {}

    print("# bench_onnx " + ("(--quick, alta-tiny)" if args.quick else "(alta-base)"))
    print("\n".join(machine_lines(device)))
    print(f"- cpu flags: {cpu_flags()}")
    print(f"- onnxruntime {ort.__version__} (CPUExecutionProvider, intra-op threads {threads})")

    with tempfile.TemporaryDirectory(prefix="alta-bench-onnx-") as tmp:
        started = time.perf_counter()
        path = export_tower(model, None, "image", Path(tmp) / "image.onnx")
        export_seconds = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        megabytes = path.stat().st_size / 2**20
    params = sum(p.numel() for p in model.vision_model.parameters()) / 1e6
    print(
        f"- image tower: {params:.1f} M parameters, exported in {export_seconds:.0f} s ({megabytes:.0f} MiB .onnx); "
        f"{args.rounds} alternating rounds per batch size: throughput from the best round, speed-up as the median "
        "of the per-round ratios"
    )

    rows = []
    for batch in args.batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, size, size, generator=gen)
        feed = {"pixel_values": x.numpy()}

        def run_torch(x=x):
            with torch.inference_mode():
                return tower(x)

        def run_onnx(feed=feed):
            return session.run(None, feed)[0]

        diff = float(np.abs(run_onnx() - run_torch().numpy()).max())
        times = interleaved_times({"torch": run_torch, "onnxruntime": run_onnx}, device, args.rounds)
        speed = {name: batch / min(ts) for name, ts in times.items()}
        ratio = paired_median(times["torch"], times["onnxruntime"])
        results[f"b{batch}_torch"], results[f"b{batch}_onnxruntime"] = speed["torch"], speed["onnxruntime"]
        results[f"b{batch}_speedup"], results[f"b{batch}_max_abs_diff"] = ratio, diff
        rows.append([batch, speed["torch"], speed["onnxruntime"], f"{ratio:.2f}x", f"{diff:.1e}"])
    print("\n## Image embedding on CPU (one frontal per image, fp32)\n")
    print(
        markdown_table(
            ["batch", "PyTorch images/s", "onnxruntime images/s", "onnxruntime speed-up", "max abs diff"], rows
        )
    )
    return results


if __name__ == "__main__":
    main()
