"""The demo's spread over seeds: `python -m training.demo` once per seed (the seed draws the data and every run),
then each row's zero-shot accuracy and the paired differences the README claims, as mean, standard deviation and
range over the seeds.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --output_dir outputs/demo_seeds     # ~7 min per seed, 2 cores
    python benchmarks/demo_seeds.py --summarize outputs/demo_seeds                     # the table again, no runs

A difference is only claimed where it is larger than its spread: the table gives each difference per seed, so a
reader sees whether its sign holds on every seed. Each seed runs in its own process (a fresh interpreter, as from
the command line); a seed whose `eval_results.json` exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import cpu_model  # noqa: E402


# (label, minuend run, subtrahend run): the comparisons the README's text under the table makes
DIFFERENCES = (
    ("aligned - random backbone", "aligned", "baseline_random_backbone"),
    ("aligned - frontal-only inputs", "aligned", "baseline_frontal_only"),
    ("aligned - backbone before ALTA", "aligned", "backbone_before_alta"),
    ("aligned - CLIP, ALTA-stage time", "aligned", "clip_scratch_alta_time"),
    ("aligned - CLIP, backbone + ALTA time", "aligned", "clip_scratch_total_time"),
)


def _spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} | {std:.3f} | {min(values):.3f} to {max(values):.3f} | " + ", ".join(
        f"{v:.3f}" for v in values
    )


def summarize(root: Path) -> str:
    """The markdown table of every `seed*/eval_results.json` under `root`."""
    files = sorted(root.glob("seed*/eval_results.json"), key=lambda p: int(p.parent.name[4:]))
    if not files:
        raise FileNotFoundError(f"no seed*/eval_results.json under {root}")
    runs = [json.loads(p.read_text()) for p in files]
    seeds = [p.parent.name[4:] for p in files]
    lines = [
        f"{len(runs)} seeds ({', '.join(seeds)}); zero-shot accuracy over six classes on 240 held-out studies per seed",
        "",
        "| row / difference | mean | std | range | per seed |",
        "|---|---|---|---|---|",
    ]
    names = [n for n in runs[0]["runs"] if all(n in r["runs"] for r in runs)]
    for name in names:
        title = runs[0]["runs"][name].get("title", name)
        lines.append(f"| {title} | {_spread([r['runs'][name]['zero_shot_accuracy'] for r in runs])} |")
    for label, a, b in DIFFERENCES:
        if a in names and b in names:
            diffs = [r["runs"][a]["zero_shot_accuracy"] - r["runs"][b]["zero_shot_accuracy"] for r in runs]
            lines.append(f"| {label} | {_spread(diffs)} |")
    seconds = [r["total_seconds"] for r in runs]
    lines += ["", f"demo wall-clock per seed: {', '.join(f'{s:.0f} s' for s in seconds)} ({cpu_model()})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/demo_seeds")
    parser.add_argument("--summarize", metavar="DIR", help="only print the table of the seeds already run in DIR")
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="after '--': more arguments for the demo")
    args = parser.parse_args(argv)
    if args.summarize:
        text = summarize(Path(args.summarize))
        print(text)
        return text
    root = Path(args.output_dir)
    extra = [a for a in args.demo_args if a != "--"]
    for seed in args.seeds:
        out = root / f"seed{seed}"
        if (out / "eval_results.json").is_file():
            print(f"seed {seed}: {out / 'eval_results.json'} exists, not run again")
            continue
        command = [sys.executable, "-m", "training.demo", "--seed", str(seed), "--output_dir", str(out), *extra]
        print("running", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO_ROOT, check=True)
    text = summarize(root)
    print(text)
    return text


if __name__ == "__main__":
    main()
