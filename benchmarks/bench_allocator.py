"""The training step with glibc's default malloc settings against the entry points' (`configure_allocator`).

Each configuration runs in its own process (malloc settings belong to a process), the two taking turns round by
round; each process builds the preset's `AltaForPreTraining`, adapters trainable, and times `--steps` steps of
forward (four losses), backward and AdamW after two warm-up steps, with the minor page faults and CPU time per step
from `resource.getrusage`.

    python benchmarks/bench_allocator.py --preset alta-base --batch-size 4 --rounds 2
    python benchmarks/bench_allocator.py --preset alta-demo --batch-size 24 --text-length 80 --rounds 2
    python benchmarks/bench_allocator.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import REPO_ROOT, machine_lines, markdown_table, run_json_worker


WORKER = r"""
import json, os, resource, sys, time
spec = json.loads(os.environ["ALTA_SPEC"])
os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # the entry points' OpenMP setting, in both configurations
if spec["configure"]:
    from training.threads import configure_allocator
    assert configure_allocator(), "configure_allocator did not apply"
import torch
torch.set_num_threads(spec["threads"])
from configuration import load_preset
from modeling_alta import AltaForPreTraining
torch.manual_seed(0)
config = load_preset(spec["preset"])
model = AltaForPreTraining(config)
model.freeze_backbone()
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
batch, length, vision = spec["batch_size"], spec["text_length"], config.vision_config
ids = torch.randint(5, min(1000, config.text_config.vocab_size), (batch, length))
masked = torch.rand(batch, length) < 0.5
inputs = dict(
    pixel_values=torch.randn(batch, vision.num_slots, 3, vision.image_size, vision.image_size),
    reconstruction_pixel_values=torch.randn(batch, 3, vision.reconstruction_image_size, vision.reconstruction_image_size),
    input_ids=ids, attention_mask=torch.ones_like(ids), mlm_input_ids=torch.where(masked, 4, ids),
    mlm_labels=torch.where(masked, ids, -100), mask_noise=torch.rand(batch, vision.num_slots, vision.num_patches),
)
def step():
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(2):
    step()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(spec["steps"]):
    step()
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
n = spec["steps"]
print(json.dumps({
    "step": seconds / n,
    "faults": (after.ru_minflt - before.ru_minflt) / n,
    "cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n,
}))
"""

CONFIGS = (("glibc defaults", False), ("entry points (`configure_allocator`)", True))


def run(spec: dict, configure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(PYTHONPATH=str(REPO_ROOT), ALTA_SPEC=json.dumps({**spec, "configure": configure}))
    return run_json_worker(WORKER, env, REPO_ROOT, "the allocator worker")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="alta-base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-length", type=int, default=101)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="alta-tiny, batch 2, 1 round (CI smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch_size, args.text_length, args.steps, args.rounds = "alta-tiny", 2, 16, 2, 1
    spec = {key: getattr(args, key) for key in ("preset", "batch_size", "text_length", "steps", "threads")}
    header = machine_lines(__import__("torch").device("cpu"))
    results: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(args.rounds):
        for _, configure in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
            results[configure].append(run(spec, configure))
    print(f"# bench_allocator ({args.preset}, batch {args.batch_size}, {args.text_length} tokens, {args.steps} steps)")
    print("\n".join(header))
    base = results[False]
    rows = []
    for name, configure in CONFIGS:
        runs = results[configure]
        ratio = statistics.median(x["step"] / b["step"] for x, b in zip(runs, base))
        rows.append([name, *(statistics.median(x[k] for x in runs) for k in ("step", "cpu", "faults")), ratio])
    print()
    print(markdown_table(["malloc", "step s", "CPU s", "minor page faults per step", "time / glibc defaults"], rows))


if __name__ == "__main__":
    main()
