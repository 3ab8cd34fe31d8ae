"""`training/align.py` end to end against its model step alone, at the demo's settings with augmentation on.

The demo's data (`processing.demo_data`, 146-px radiographs, reports of up to 80 tokens), the `alta-demo` preset,
batch 24, one DataLoader worker, augmentation on: `align.py` trains `--steps` steps and reports the rate of its
training loop after the first step (`train_seconds`, data loading included). The peer is the same model step
(forward, backward, AdamW) on batches the same collator made in advance, so the ratio is what data loading and the
loop's bookkeeping cost. Each checkout runs in its own process (`--tree`, for a before/after comparison), in
alternating rounds.

    python benchmarks/bench_align_demo.py --steps 30 --rounds 2 [--tree /path/to/other/checkout]
    python benchmarks/bench_align_demo.py --steps 30 --rounds 2 --threads 1     # as the demo runs it
    python benchmarks/bench_align_demo.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import REPO_ROOT, machine_lines, markdown_table


WORKER = r"""
import json, os, sys, tempfile, time
from pathlib import Path
spec = json.loads(os.environ["ALTA_SPEC"])
sys.path.insert(0, spec["tree"])
import torch
if spec.get("threads"):
    torch.set_num_threads(spec["threads"])  # as `training.demo --threads` does before it calls align.main
from configuration import load_preset
from modeling_alta import AltaForPreTraining
from modeling_alta.image_processing_alta import AltaImageProcessor
from modeling_alta.processing_alta import AltaProcessor
from processing.collate import AltaPretrainingCollator
from processing.datasets import IndexedStudies
from processing.demo_data import generate_demo_dataset
from training.align import main as align_main
from training.demo import build_vocabulary
from transformers import BertTokenizer
import training.signals as signals

# Checkouts before the fix took the SIGCHLD of a DataLoader worker (end of an epoch) for a stop request.
_handle = signals.InterruptMonitor.handle
signals.InterruptMonitor.handle = lambda self, s: _handle(self, s) if s in signals.HANDLED_SIGNALS else None

tmp = Path(tempfile.mkdtemp())
batch, steps = spec["batch_size"], spec["steps"]
data = generate_demo_dataset(num_studies=int(batch * (steps + 2) / 0.8) + 8, seed=0, image_size=146)
data.save_to_disk(str(tmp / "data"))
tokenizer_dir = build_vocabulary(list(data["train"]["report"]), tmp / "tokenizer")
vocab = len((tokenizer_dir / "vocab.txt").read_text().split("\n")) - 1
overrides = {"text_config": {"vocab_size": vocab}}
argv = [
    "--preset", "alta-demo", "--config_overrides", json.dumps(overrides),
    "--tokenizer_name_or_path", str(tokenizer_dir), "--dataset_path", str(tmp / "data"),
    "--output_dir", str(tmp / "run"), "--per_device_train_batch_size", str(batch), "--max_length", "80",
    "--max_steps", str(steps), "--learning_rate", "1e-4", "--warmup_steps", "1", "--report_to", "none",
    "--logging_steps", "1000", "--dataloader_num_workers", str(spec["workers"]), "--augment", "true", "--cpu",
    "--save_adapter", "false", *spec["extra"],
]
# The loop's rate after its first step: the per-step times of the training loop's progress are not exposed, so
# run it twice (1 step, then `steps`) and take the difference.
one = align_main(argv[:argv.index("--max_steps") + 1] + ["1"] + argv[argv.index("--max_steps") + 2:]
                 + ["--output_dir", str(tmp / "run1")])
full = align_main(argv)
loop_rate = (steps - 1) * batch / (full["train_seconds"] - one["train_seconds"])

# The model step alone on batches made in advance by the same collator.
config = load_preset("alta-demo", **overrides)
tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
processor = AltaProcessor(image_processor=AltaImageProcessor.for_vision_config(config.vision_config),
                          tokenizer=tokenizer, max_length=80)
collator = AltaPretrainingCollator(processor, max_length=80, seed=0, augment=True,
                                   mask_noise_shape=(config.vision_config.num_slots, config.vision_config.num_patches))
studies = IndexedStudies(data["train"])
batches = []
for b in range(steps):
    made = collator([studies[i % len(studies)] for i in range(b * batch, (b + 1) * batch)])
    batches.append({k: v for k, v in made.items() if k not in ("skipped", "truncated")})
torch.manual_seed(0)
model = AltaForPreTraining(config)
model.freeze_backbone()
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
def step(inputs):
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step(batches[0])
start = time.perf_counter()
for inputs in batches[1:]:
    step(inputs)
model_rate = (steps - 1) * batch / (time.perf_counter() - start)
print(json.dumps({"loop": loop_rate, "model": model_rate}))
"""


def run(tree: Path, env_extra: dict[str, str], spec: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra, PYTHONPATH=str(tree), ALTA_SPEC=json.dumps({**spec, "tree": str(tree)}))
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: the run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (the demo: 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the training process (default: torch's, one per core; the demo runs 1, leaving the "
        "other core to its DataLoader worker)",
    )
    parser.add_argument("--tree", action="append", default=[], help="another checkout to run too")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.rounds = 3, 4, 1
    spec = {"steps": args.steps, "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
            "extra": []}  # fmt: skip
    # Each checkout as its entry point runs it: this one sets OMP_WAIT_POLICY=PASSIVE (training/threads.py).
    from training.threads import openmp_environment

    configs = [("this checkout", REPO_ROOT, openmp_environment({}))]
    configs += [(Path(t).name, Path(t), {}) for t in args.tree]
    header = machine_lines(__import__("torch").device("cpu"))  # the load average before the runs
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        for name, tree, env in configs if r % 2 == 0 else configs[::-1]:
            results[name].append(run(tree, env, spec))
    print(
        f"# bench_align_demo (alta-demo, batch {args.batch_size}, {args.steps} steps, {args.workers} worker(s), "
        f"torch threads {args.threads or 'default'})"
    )
    print("\n".join(header))
    rows = []
    for name, _, _ in configs:
        runs = results[name]
        loop = statistics.median(x["loop"] for x in runs)
        model = statistics.median(x["model"] for x in runs)
        ratio = statistics.median(x["loop"] / x["model"] for x in runs)
        rows.append([name, loop, model, ratio])
    print()
    print(markdown_table(["checkout", "align.py loop studies/s", "model step studies/s", "loop / model"], rows))


if __name__ == "__main__":
    main()
