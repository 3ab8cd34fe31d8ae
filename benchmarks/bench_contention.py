"""A training step with and without a competing busy process: step time, CPU time and context switches.

With its default wait policy, the OpenMP runtime of PyTorch's CPU wheels (GNU libgomp) keeps idle worker threads
spinning for a while after each parallel region. Alone on its cores that saves the wake-up of the next region; with
another busy process on the same cores the spinning threads take turns with it and every parallel region waits for
its slowest thread. `resource.getrusage` shows which it is: a spinning process makes few voluntary context switches
per step, a sleeping one many.

Each configuration runs in its own worker process (the OpenMP policy is read when the runtime loads, so it has to be
set in the environment of a new process). Workers are long-lived and take turns step by step: one step of each
configuration per round, with the competitor, when asked for, started just before the step and stopped after it, so
that every round compares the configurations under the same background load. The table gives per-step medians and
the median over rounds of each configuration's time relative to the first one.

    python benchmarks/bench_contention.py --preset alta-base --batch-size 4 --rounds 3
    python benchmarks/bench_contention.py --policy default passive   # the wait policies compared
    python benchmarks/bench_contention.py --tree /path/to/other/checkout  # also the step of another checkout
    python benchmarks/bench_contention.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import REPO_ROOT, machine_lines, markdown_table


# What each --policy sets in the worker's environment (nothing set = the runtime's default).
POLICIES = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},  # what the package sets
    "package": None,  # whatever the package's entry points set (`training.threads.configure_openmp`)
}

WORKER = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.environ["ALTA_TREE"])
sys.path.insert(0, os.path.join(os.environ["ALTA_TREE"], "benchmarks"))
import torch
torch.set_num_threads(int(os.environ["ALTA_THREADS"]))
from bench_training import make_batch
from configuration import load_preset
from modeling_alta import AltaForPreTraining
spec = json.loads(os.environ["ALTA_SPEC"])
config = load_preset(spec["preset"])
torch.manual_seed(0)
model = AltaForPreTraining(config)
model.freeze_backbone()
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
batch = make_batch(config, spec["batch_size"], spec["text_length"], torch.device("cpu"))
def step():
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step()  # warm-up
print("ready", flush=True)
for line in sys.stdin:
    before, wall, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
    step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
        "vcs": after.ru_nvcsw - before.ru_nvcsw, "ivcs": after.ru_nivcsw - before.ru_nivcsw,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
    }), flush=True)
"""

BUSY = "import time\nwhile True:\n    pass\n"


def _worker_env(tree: Path, policy: str, threads: int, spec: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"ALTA_TREE": str(tree), "ALTA_THREADS": str(threads), "ALTA_SPEC": json.dumps(spec)})
    env["PYTHONPATH"] = str(tree)
    if policy == "package":
        sys.path.insert(0, str(REPO_ROOT))
        from training.threads import openmp_environment

        env.update(openmp_environment(env))
    else:
        env.update(POLICIES[policy])
    return env


class Worker:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker {name} did not start (got {line!r}); see its stderr above")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="alta-base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policy", nargs="+", default=["default", "package"], choices=sorted(POLICIES))
    parser.add_argument("--tree", action="append", default=[], help="another checkout to run (its default policy)")
    parser.add_argument("--competitors", type=int, default=1, help="busy processes in the contended runs")
    parser.add_argument("--quick", action="store_true", help="alta-tiny, batch 2, 1 round (CI smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch_size, args.text_length, args.rounds = "alta-tiny", 2, 32, 1
    spec = {"preset": args.preset, "batch_size": args.batch_size, "text_length": args.text_length}
    configs = [(f"this checkout, {p}", REPO_ROOT, p) for p in args.policy]
    configs += [(f"{Path(t).name}, default", Path(t), "default") for t in args.tree]
    header = machine_lines(__import__("torch").device("cpu"))  # the load average before the runs
    workers = [Worker(name, _worker_env(tree, policy, args.threads, spec)) for name, tree, policy in configs]
    results: dict[tuple[str, bool], list[dict]] = {(w.name, c): [] for w in workers for c in (False, True)}
    try:
        for r in range(args.rounds):
            for contended in (False, True):
                order = workers if r % 2 == 0 else workers[::-1]
                for worker in order:
                    busy = [
                        subprocess.Popen([sys.executable, "-c", BUSY])
                        for _ in range(args.competitors if contended else 0)
                    ]
                    time.sleep(0.2 if busy else 0.0)
                    try:
                        results[(worker.name, contended)].append(worker.step())
                    finally:
                        for proc in busy:
                            proc.kill()
                            proc.wait()
    finally:
        for worker in workers:
            worker.close()

    print(f"# bench_contention ({args.preset}, batch {args.batch_size}, {args.threads} threads per worker)")
    print("\n".join(header))
    print(f"- {args.rounds} round(s); contended = {args.competitors} busy process(es) running during the step\n")
    rows, out = [], {}
    first = workers[0].name
    for contended in (False, True):
        for worker in workers:
            steps = results[(worker.name, contended)]
            base = results[(first, contended)]
            ratio = statistics.median(s["wall"] / b["wall"] for s, b in zip(steps, base))
            row = [
                worker.name,
                "yes" if contended else "no",
                statistics.median(s["wall"] for s in steps),
                statistics.median(s["cpu"] for s in steps),
                statistics.median(s["vcs"] for s in steps),
                statistics.median(s["ivcs"] for s in steps),
                ratio,
            ]
            rows.append(row)
            out[f"{worker.name}|{'contended' if contended else 'alone'}|wall"] = row[2]
            out[f"{worker.name}|{'contended' if contended else 'alone'}|vcs"] = row[4]
    print(
        markdown_table(
            [
                "configuration",
                "competitor",
                "step s (wall)",
                "CPU s",
                "voluntary cs",
                "involuntary cs",
                f"time / {first}",
            ],
            rows,
        )
    )
    return out


if __name__ == "__main__":
    main()
