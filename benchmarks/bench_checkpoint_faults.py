"""What the checkpoint fault protection costs: `save_checkpoint` (accelerate's `save_state`, then the file manifest
with a sha256 of every file and the atomic trainer state) against `save_state` alone, and `verify_checkpoint`
(what `--resume_from_checkpoint` runs before loading), on an `AltaForPreTraining` with the ALTA trainable set and
AdamW state after one step.

    python benchmarks/bench_checkpoint_faults.py            # alta-base (1 GB of weights), 3 rounds
    python benchmarks/bench_checkpoint_faults.py --quick    # alta-tiny, 1 round (the test's smoke run)

Prints a markdown table; peers alternate within each round and the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="alta-tiny, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch
    from accelerate import Accelerator

    from configuration import load_preset
    from modeling_alta import AltaForPreTraining
    from training.arguments import AlignArguments
    from training.checkpoints import TrainerState, save_checkpoint, verify_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "alta-tiny" if args.quick else "alta-base"
    rounds = 1 if args.quick else args.rounds
    torch.manual_seed(0)
    model = AltaForPreTraining(load_preset(preset))
    model.freeze_backbone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # the Adam moments exist, as in any checkpoint after step 1
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)

    times: dict[str, list[float]] = {"save_state": [], "save_checkpoint": [], "verify_checkpoint": []}
    size = 0
    with tempfile.TemporaryDirectory(prefix="alta-bench-ckpt-") as tmp:
        for round_index in range(rounds):
            plain = Path(tmp) / f"plain-{round_index}"
            start = time.perf_counter()
            accelerator.save_state(str(plain))
            times["save_state"].append(time.perf_counter() - start)
            size = _folder_size(plain)
            shutil.rmtree(plain)

            out = AlignArguments(output_dir=os.path.join(tmp, f"run-{round_index}"), checkpoints_total_limit=0)
            start = time.perf_counter()
            path = save_checkpoint(accelerator, TrainerState(global_step=round_index + 1), out)
            times["save_checkpoint"].append(time.perf_counter() - start)
            start = time.perf_counter()
            problems = verify_checkpoint(path)
            times["verify_checkpoint"].append(time.perf_counter() - start)
            if problems:
                raise RuntimeError(f"a fresh checkpoint does not verify: {problems}")
            shutil.rmtree(out.output_dir)

    plain, full, verify = (statistics.median(times[k]) for k in ("save_state", "save_checkpoint", "verify_checkpoint"))
    print(f"## Checkpoint save and verify ({preset}, {size / 2**20:.0f} MiB per checkpoint, {rounds} rounds)\n")
    print("| step | seconds (median) | MiB/s |")
    print("|---|---:|---:|")
    print(f"| `save_state` alone | {plain:.3f} | {size / 2**20 / plain:.0f} |")
    print(f"| `save_checkpoint` (save_state + sha256 manifest + atomic trainer state) | {full:.3f} | "
          f"{size / 2**20 / full:.0f} |")  # fmt: skip
    print(f"| `verify_checkpoint` (re-hash every file, read the random states) | {verify:.3f} | "
          f"{size / 2**20 / verify:.0f} |")  # fmt: skip
    print(f"\nmanifest overhead per save: {full - plain:+.3f} s ({(full / plain - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
