"""`training/align.py` end to end against its model step alone, at the demo's settings with augmentation on.

The demo's data (`processing.demo_data`, 146-px radiographs, reports of up to 80 tokens), the `alta-demo` preset,
batch 24, one DataLoader worker, augmentation on, the decoded-study cache as the demo sets it (256 MiB): `align.py`
trains for one step, one epoch more and two epochs more, and the differences of its training loop's seconds
(`train_seconds`, data loading included) give the loop's rate in the first epoch (every study read and decoded) and
in the second (studies served from the cache: the demo's stages spend all but their first epoch so). The peer is the
same model step (forward, backward, AdamW) on an epoch of batches the same collator made in advance, so the ratio is
what data loading and the loop's bookkeeping cost. Each checkout runs in its own process (`--tree`, for a
before/after comparison; one without the cache reads every epoch), in alternating rounds.

    python benchmarks/bench_align_demo.py --steps 28 --rounds 2 [--tree /path/to/other/checkout]
    python benchmarks/bench_align_demo.py --steps 28 --rounds 2 --threads 1     # as the demo runs it
    python benchmarks/bench_align_demo.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import REPO_ROOT, machine_lines, markdown_table, run_json_worker


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
# About `steps` batches an epoch: the demo data puts 70 % of the studies in the training split.
data = generate_demo_dataset(num_studies=int(batch * (steps + 1) / 0.7) + 8, seed=0, image_size=146)
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
# The loop's period per step: the time from one step's forward to the next one's (data loading, forward, backward,
# optimizer, bookkeeping), over 1 + 2E steps (E batches an epoch). The first epoch reads and decodes every study
# (its first step left out); from the second on, a checkout with the decoded-study cache (as the demo runs it)
# serves them from memory.
epoch = len(data["train"]) // batch
if spec["cache_mb"] and "cache_decoded_studies_mb" in (Path(spec["tree"]) / "training" / "arguments.py").read_text():
    argv += ["--cache_decoded_studies_mb", str(spec["cache_mb"])]
import training.align as align_module
starts = []
_forward_backward = align_module.forward_backward
def timed(run, batch_):
    starts.append(time.perf_counter())
    return _forward_backward(run, batch_)
align_module.forward_backward = timed
at = argv.index("--max_steps") + 1
align_main(argv[:at] + [str(1 + 2 * epoch)] + argv[at + 1:])
periods = [b - a for a, b in zip(starts, starts[1:])]
first_rate = (epoch - 1) * batch / sum(periods[1:epoch])
later_rate = epoch * batch / sum(periods[epoch:2 * epoch])

# The model step alone on batches made in advance by the same collator.
config = load_preset("alta-demo", **overrides)
tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
processor = AltaProcessor(image_processor=AltaImageProcessor.for_vision_config(config.vision_config),
                          tokenizer=tokenizer, max_length=80)
collator = AltaPretrainingCollator(processor, max_length=80, seed=0, augment=True,
                                   mask_noise_shape=(config.vision_config.num_slots, config.vision_config.num_patches))
studies = IndexedStudies(data["train"])
batches = []
for b in range(epoch + 1):
    made = collator([studies[i % len(studies)] for i in range(b * batch, (b + 1) * batch)])
    batches.append({k: v for k, v in made.items() if k not in ("skipped", "truncated")})
torch.manual_seed(0)
model = AltaForPreTraining(config)
model.freeze_backbone()
model.train()
# the tree's own optimizer (align.py's groups and implementation), so both sides of the ratio step alike
from training.arguments import AlignArguments
from training.build import build_optimizer
optimizer, _ = build_optimizer(model, AlignArguments(output_dir='unused', learning_rate=1e-4), 1)
def step(inputs):
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step(batches[0])
start = time.perf_counter()
for inputs in batches[1:]:
    step(inputs)
model_rate = epoch * batch / (time.perf_counter() - start)
print(json.dumps({"first": first_rate, "loop": later_rate, "model": model_rate, "batches": epoch}))
"""


def run(tree: Path, env_extra: dict[str, str], spec: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra, PYTHONPATH=str(tree), ALTA_SPEC=json.dumps({**spec, "tree": str(tree)}))
    return run_json_worker(WORKER, env, tree, str(tree))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28, help="about this many batches an epoch")
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
    parser.add_argument(
        "--cache-mb", type=float, default=256, help="--cache_decoded_studies_mb (the demo's 256; 0 reads every epoch)"
    )
    parser.add_argument("--tree", action="append", default=[], help="another checkout to run too")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.rounds = 3, 4, 1
    spec = {"steps": args.steps, "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
            "cache_mb": args.cache_mb, "extra": []}  # fmt: skip
    # Each checkout as its entry point runs it: this one sets GOMP_SPINCOUNT=1000 (training/threads.py).
    from training.threads import openmp_environment

    configs = [("this checkout", REPO_ROOT, openmp_environment({}))]
    configs += [(Path(t).name, Path(t), {}) for t in args.tree]
    header = machine_lines(__import__("torch").device("cpu"))  # the load average before the runs
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        for name, tree, env in configs if r % 2 == 0 else configs[::-1]:
            results[name].append(run(tree, env, spec))
    print(
        f"# bench_align_demo (alta-demo, batch {args.batch_size}, {results[configs[0][0]][0]['batches']} batches an "
        f"epoch, {args.workers} worker(s), torch threads {args.threads or 'default'}, cache {args.cache_mb:g} MiB)"
    )
    print("\n".join(header))
    rows = []
    for name, _, _ in configs:
        runs = results[name]
        median = {key: statistics.median(x[key] for x in runs) for key in ("first", "loop", "model")}
        first_ratio = statistics.median(x["first"] / x["model"] for x in runs)
        ratio = statistics.median(x["loop"] / x["model"] for x in runs)
        rows.append([name, median["first"], median["loop"], median["model"], first_ratio, ratio])
    print()
    headers = ["checkout", "loop studies/s, epoch 1", "loop studies/s, epoch 2", "model step studies/s",
               "loop / model, epoch 1", "loop / model, epoch 2"]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
