"""Alignment throughput of `training/align.py`: steps/s and studies/s, one process vs two CPU processes.

    python benchmarks/bench_align.py [--preset alta-tiny] [--steps 20] [--global-batch 8] [--quick]

Writes synthetic studies and a word-level vocabulary to a temporary folder, runs `align.py` once in-process and
once under `accelerate launch --multi_gpu --num_processes 2 ... --cpu` with the same global batch, and prints a
markdown table. Rates use `train_seconds` (the whole training loop, data loading and the first, slower step
included; not the process start-up, export or evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _write_data(folder: Path, n: int, size: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    from modeling_alta.configuration_alta import STUDY_SLOTS
    from processing.datasets import dataset_from_rows, save_study_dataset
    from training.demo import build_vocabulary

    rng = np.random.default_rng(0)
    reports = ["There is a small left pleural effusion.", "The heart is enlarged.", "Lungs are clear."]
    rows = []
    for i in range(n):
        row = {}
        for view in STUDY_SLOTS:
            path = folder / "img" / f"{i}_{view}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((size, size)) * 255).astype("uint8"), mode="L").save(path)
            row[view] = str(path)
        row["report"] = " ".join(reports[(i + k) % 3] for k in range(3))
        rows.append(row)
    data = save_study_dataset(dataset_from_rows(rows), folder / "data")
    return data, build_vocabulary(reports, folder / "tokenizer")


def _argv(args, data: Path, tokenizer: Path, out: Path, per_device: int) -> list[str]:
    vocab = len((tokenizer / "vocab.txt").read_text().split("\n")) - 1
    return [
        "--preset", args.preset,
        "--config_overrides", json.dumps({"text_config": {"vocab_size": vocab}}),
        "--tokenizer_name_or_path", str(tokenizer),
        "--dataset_path", str(data),
        "--output_dir", str(out),
        "--per_device_train_batch_size", str(per_device),
        "--max_steps", str(args.steps),
        "--learning_rate", "1e-4",
        "--report_to", "none",
        "--logging_steps", "1000",
        "--cpu",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="alta-tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.global_batch, args.image_size = 2, 4, 64
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, tokenizer = _write_data(tmp, n=max(args.global_batch * (args.steps + 1), 8), size=args.image_size)
        rows = []
        from training.align import main as align_main

        start = time.perf_counter()
        one = align_main(_argv(args, data, tokenizer, tmp / "one", args.global_batch))
        rows.append(("1 process", args.global_batch, one["train_seconds"], time.perf_counter() - start))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(29600 + os.getpid() % 1000),
            str(REPO / "training" / "align.py"), *_argv(args, data, tokenizer, tmp / "two", args.global_batch // 2),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)
        two = json.loads((tmp / "two" / "model" / "train_results.json").read_text())
        rows.append(("2 processes (gloo)", args.global_batch, two["train_seconds"], time.perf_counter() - start))
    print(f"\n`{args.preset}`, {args.steps} steps, global batch {args.global_batch}, {os.cpu_count()} CPU cores\n")
    print("| run | global batch | train loop s | steps/s | studies/s | wall s (incl. start-up) |")
    print("|---|---|---|---|---|---|")
    for name, batch, seconds, wall in rows:
        print(
            f"| {name} | {batch} | {seconds:.1f} | {args.steps / seconds:.3f} | {args.steps * batch / seconds:.2f} "
            f"| {wall:.1f} |"
        )


if __name__ == "__main__":
    main()
