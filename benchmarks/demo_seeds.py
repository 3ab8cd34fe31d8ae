"""The demo's spread over seeds: `python -m training.demo` once per seed (the seed draws the data and every run),
then each row's zero-shot accuracy and the paired differences the README claims, as mean, standard deviation and
range over the seeds.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --output_dir outputs/demo_seeds     # ~7 min per seed, 2 cores
    python benchmarks/demo_seeds.py --summarize outputs/demo_seeds                     # the table again, no runs
    python benchmarks/demo_seeds.py --bootstrap outputs/demo                           # ~2 min: test-set draws

`--bootstrap` takes one finished demo and gives the spread over draws of the test set instead: every run's
zero-shot prediction per held-out study (recomputed, and checked against `eval_results.json`), then 2,000 paired
bootstrap resamples of the 240 studies: each row's accuracy and each difference as a 95 % interval. It says how much
the table would move with another test set of the same size; the seeds say how much it moves with another training
run and data, which the bootstrap does not cover.

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


def study_correct(run: dict, test, prompts: dict[str, list[str]]) -> list[bool]:
    """Whether each test study is classified correctly by the run's model (the demo's zero-shot path)."""
    from evaluation.results import embed_readable_images, prepare
    from inference.embedding import default_text_length
    from inference.zero_shot import ZeroShotClassifier
    from modeling_alta.configuration_alta import STUDY_SLOTS

    model, processor, _ = prepare(run["model_dir"], None, None)
    clf = ZeroShotClassifier(model, processor, prompts, clean_text=False, max_length=default_text_length(processor))
    rows = list(test)
    inputs = [r["frontal"] for r in rows] if run["frontal_only"] else [{c: r[c] for c in STUDY_SLOTS} for r in rows]
    embeds, kept, skipped = embed_readable_images(
        model, processor, inputs, [f"test row {i}" for i in range(len(rows))], 32, desc="studies"
    )
    if skipped:
        raise ValueError(f"{run['model_dir']}: {len(skipped)} test studies unreadable")
    predicted = clf.scores_from_embeddings(embeds).predictions.tolist()
    correct = [clf.class_names[p] == r["label"] for p, r in zip(predicted, rows)]
    accuracy = sum(correct) / len(correct)
    if abs(accuracy - run["zero_shot_accuracy"]) > 1e-9:
        raise ValueError(f"{run['model_dir']}: recomputed accuracy {accuracy} != {run['zero_shot_accuracy']}")
    return correct


def bootstrap(folder: Path, resamples: int = 2000) -> str:
    """Paired bootstrap over the test studies of one demo run (see the module docstring)."""
    import datasets
    import numpy as np

    from processing.demo_data import demo_class_prompts

    results = json.loads((folder / "eval_results.json").read_text())
    test = datasets.load_from_disk(str(folder / "data"))["test"]
    correct = {
        name: np.array(study_correct(run, test, demo_class_prompts()), dtype=float)
        for name, run in results["runs"].items()
    }
    draws = np.random.default_rng(0).integers(0, len(test), size=(resamples, len(test)))

    def interval(values: np.ndarray) -> str:
        means = values[draws].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        return f"{values.mean():.3f} | {means.std():.3f} | {low:.3f} to {high:.3f}"

    lines = [
        f"{folder}: {len(test)} test studies, {resamples} paired bootstrap resamples (seed 0)",
        "",
        "| row / difference | value | bootstrap std | 95 % interval |",
        "|---|---|---|---|",
    ]
    lines += [f"| {results['runs'][n].get('title', n)} | {interval(v)} |" for n, v in correct.items()]
    lines += [
        f"| {label} | {interval(correct[a] - correct[b])} |"
        for label, a, b in DIFFERENCES
        if a in correct and b in correct
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/demo_seeds")
    parser.add_argument("--summarize", metavar="DIR", help="only print the table of the seeds already run in DIR")
    parser.add_argument("--bootstrap", metavar="DIR", help="spread over test-set draws of one finished demo in DIR")
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="after '--': more arguments for the demo")
    args = parser.parse_args(argv)
    if args.bootstrap:
        text = bootstrap(Path(args.bootstrap))
        print(text)
        return text
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
