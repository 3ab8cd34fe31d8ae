"""The built-in demo, end to end on a CPU in minutes (the README's main job):

    python -m training.demo [--output_dir outputs/demo] [--num_studies 1200] [--seed 0] [--quick]

1. generate synthetic radiograph-like studies with paired reports (`processing/demo_data.py`): frontal and lateral
   views, priors with change, six classes (the five CheXpert 5x200 findings and No Finding), some effusions
   visible only on the lateral view; train / validation / test splits;
2. build a word-level WordPiece vocabulary from the reports (the demo has no CXR-BERT);
3. obtain a small backbone with adapters off: by default masked image modeling + the global contrastive loss
   (`align.py --adapter backbone`); `--backbone_mode mae` trains the paper's MRM stage instead (masked image +
   image-conditioned masked report modeling), on which 150 ALTA steps reach less (see `--backbone_mode`).
   The words that name a finding are masked in every report's MLM copy, so that the report modeling needs the
   image (`processing.demo_data.FINDING_WORDS`);
4. align it with ALTA adapters through `training/align.py` (the backbone frozen);
5. train the baselines: ALTA with the same step budget from a random (not pretrained) backbone and on frontal-only
   inputs; CLIP trained from scratch (the whole model, global contrastive loss, no patch masking) for about the
   wall-clock of the ALTA stage and of the backbone + ALTA stages;
6. evaluate on held-out test studies (zero-shot accuracy over the six classes, image-to-text and text-to-image
   P@5), run the zero-shot pipeline on a held-out image, and write `outputs/demo/eval_results.json`, the table
   (`table.md`) and PNGs. Every run reports its trainable parameters, steps, seconds and FLOPs (counted on its
   first step with `torch.utils.flop_counter`, times its steps).

Each training run is its own `training/align.py` process (log in `outputs/demo/logs/`), two at a time by default
(`--jobs`), each on one thread: on a 2-core machine the demo takes about half the time of running them in turn.

One seed per run of the demo (`--seed`: the data and every run); `benchmarks/demo_seeds.py` repeats it over seeds.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before torch loads the OpenMP runtime: idle threads sleep instead of spinning (training/threads.py).
import training.openmp_defaults  # noqa: F401, I001

import torch

from modeling_alta.configuration_alta import STUDY_SLOTS
from processing.atomic import atomic_write_text
from processing.demo_data import FINDING_WORDS, strip_boilerplate
from training import align


logger = logging.getLogger("alta.demo")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PRETRAIN_STEPS = 400
ALIGN_STEPS = 150
# The ALTA stage and backbone + ALTA in CLIP steps beside another run: timed when those took 77 s and 181 s (CLIP
# step 0.47-0.49 s); every re-run since checks they still match (RESULTS.md §8: 64 s vs 63 s, 158 s vs 153 s)
CLIP_STEPS = [165, 370]


def build_vocabulary(texts: list[str], folder: Path) -> Path:
    """A word-level vocabulary (every lower-cased word and punctuation mark of `texts`) saved as a tokenizer."""
    from transformers import BertTokenizer

    words = collections.Counter()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + sorted(words)) + "\n")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    return folder


def frontal_only(dataset):
    """The same studies with only the current frontal (the baseline without laterals and priors)."""
    return dataset.map(lambda row: {slot: None for slot in STUDY_SLOTS[1:]}, features=dataset.features)


# ---------------------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--num_studies", type=int, default=1200)
    parser.add_argument(
        "--image_size",
        type=int,
        default=146,
        help="side of the generated radiographs (the model resizes to 146, crops 128)",
    )
    parser.add_argument("--pretrain_steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--align_steps", type=int, default=ALIGN_STEPS)
    parser.add_argument(
        "--clip_steps",
        type=int,
        nargs=2,
        default=CLIP_STEPS,
        metavar=("SHORT", "LONG"),
        help="steps of the two CLIP-from-scratch baselines: about the wall-clock of the ALTA stage, and of the "
        "backbone stage plus the ALTA stage (fixed numbers measured on a 2-core CPU, so that the demo stays "
        "deterministic; the table shows the seconds each run took)",
    )
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=5e-4,
        help="peak learning rate of the runs that train whole towers (the backbone stage, CLIP from scratch)",
    )
    parser.add_argument(
        "--align_learning_rate",
        type=float,
        default=3e-3,
        help="peak learning rate of the adapter stages (ALTA and the baselines): the adapter set is small and starts "
        "at zero, 150 steps at 5e-4 leave it where it started",
    )
    parser.add_argument(
        "--align_mask_ratio",
        type=float,
        default=0.5,
        help="patch mask ratio of the adapter stages (the recipe's is 0.75). Measured on seed 0 with the demo's "
        "study pooling (benchmarks/RESULTS.md §8): 0.5 gives 0.512 zero-shot against 0.442 at 0.75, for about 1.5x "
        "the stage's time",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="random affine + jitter while aligning (the recipe; off by default: in a 150-step demo it costs more than "
        "it regularises: with an earlier recipe, zero-shot 0.37 with it and 0.41 without)",
    )
    parser.add_argument(
        "--backbone_mode",
        choices=("mae", "backbone"),
        default="backbone",
        help="backbone stage, adapters off: masked image + image-conditioned masked report modeling only ('mae', the "
        "paper's MRM stage), or masked image modeling + the global contrastive loss ('backbone', default). Measured "
        "on this demo: 300 MRM steps give image features a linear probe classifies at 0.61 (raw 16x16 pixels: "
        "0.85); 150 ALTA steps on such a backbone reach 0.388 zero-shot on seed 0 against 0.442 on the default one "
        "at the same adapter settings (benchmarks/RESULTS.md §8)",
    )
    parser.add_argument(
        "--mlm_mask",
        choices=("finding_words", "reference"),
        default="finding_words",
        help="MLM masking: the reference rule plus every finding word masked (default; "
        "processing.demo_data.FINDING_WORDS), or the reference rule alone",
    )
    parser.add_argument(
        "--backbone_norm_pix",
        choices=("true", "false"),
        default="true",
        help="per-patch normalised MAE target in the backbone stage (the reference's norm_pix_loss)",
    )
    parser.add_argument(
        "--backbone_mask_ratio", type=float, default=0.75, help="patch mask ratio of the backbone stage"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every run")
    parser.add_argument(
        "--study_pooling",
        choices=("all", "present"),
        default="present",
        help="how a study's slot embeddings are pooled: the present views only (default), or all four slots, the "
        "missing-view token's included, as the reference trains. Measured on seed 0 (benchmarks/RESULTS.md §8): "
        "CLIP from scratch, 360 steps, 0.633 zero-shot with 'present' against 0.400 with 'all'; the backbone 0.404 "
        "against 0.346",
    )
    parser.add_argument(
        "--vision_pooling",
        choices=("cls", "mean"),
        default="mean",
        help="frame embedding of the demo backbone: its CLS token (as the reference) or the mean of its patch tokens "
        "(default: a few hundred masked-modeling steps leave the CLS token nearly untrained)",
    )
    parser.add_argument(
        "--text_pooling",
        choices=("cls", "mean"),
        default="mean",
        help="report embedding of the demo text tower: [CLS] (as CXR-BERT) or the mean of its tokens (default: the "
        "demo's text tower is pre-trained by masked language modeling only, which does not train [CLS])",
    )
    parser.add_argument("--prior_rate", type=float, default=0.5, help="share of studies with a prior")
    parser.add_argument("--lateral_missing_rate", type=float, default=0.25, help="share of studies without lateral")
    parser.add_argument(
        "--config_overrides",
        default="{}",
        help='JSON merged into the demo model config (e.g. \'{"vision_config": {"norm_pix_loss": false}}\')',
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each training process and of the evaluation (default 1: the model is small, and "
        "one thread keeps the results the same whatever the number of cores)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="training runs at once, each its own `training/align.py` process (default 2: on a 2-core machine a "
        "second 1-thread run costs the first 5-16 %% of its speed, so the demo takes about half the time)",
    )
    parser.add_argument("--no_baselines", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few studies (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_studies, args.pretrain_steps, args.align_steps, args.batch_size = 120, 3, 3, 8
        args.clip_steps = [3, 4]
    return args


# ---------------------------------------------------------------------------------------------------------------
# 1-2. data, vocabulary and the settings every run shares
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DemoSetup:
    """What the training stages share: the data, the prompts, the model sizes and the `align.py` arguments."""

    data: Any  # DatasetDict (train / validation / test)
    prompts: dict[str, list[str]]
    sizes: str  # --config_overrides of the runs built from the preset (JSON)
    common: list[str]  # align.py arguments of every run
    frontal_common: list[str]  # the same on the frontal-only copy of the data


def prepare(args: argparse.Namespace, out: Path) -> DemoSetup:
    """Generate the studies (reports without boilerplate), the frontal-only copy, the vocabulary and the arguments
    every `align.py` run shares."""
    from processing.demo_data import demo_class_prompts, generate_demo_dataset

    data = generate_demo_dataset(
        num_studies=args.num_studies,
        seed=args.seed,
        image_size=args.image_size,
        prior_rate=args.prior_rate,
        lateral_missing_rate=args.lateral_missing_rate,
    )
    data = data.map(lambda row: {"report": strip_boilerplate(row["report"])})
    data.save_to_disk(str(out / "data"))
    frontal = data.__class__({k: frontal_only(v) for k, v in data.items()})
    frontal.save_to_disk(str(out / "data_frontal_only"))
    prompts = demo_class_prompts()
    texts = [r for split in data.values() for r in split["report"]] + [p for ps in prompts.values() for p in ps]
    tokenizer_dir = build_vocabulary(texts, out / "tokenizer")
    vocab_size = len((tokenizer_dir / "vocab.txt").read_text().split("\n")) - 1
    overrides: dict[str, Any] = {
        "text_config": {"vocab_size": vocab_size, "pooling": args.text_pooling},
        "vision_config": {"study_pooling": args.study_pooling, "pooling": args.vision_pooling},
    }
    for key, value in json.loads(args.config_overrides).items():
        overrides[key] = {**overrides[key], **value} if isinstance(value, dict) and key in overrides else value
    common = [
        "--tokenizer_name_or_path", str(tokenizer_dir),
        "--dataset_path", str(out / "data"),
        "--per_device_train_batch_size", str(args.batch_size),
        "--max_length", "80",
        "--seed", str(args.seed),
        "--report_to", "none",
        "--logging_steps", "25",
        "--warmup_steps", "20" if not args.quick else "1",
        "--checkpoints_total_limit", "1",
        "--dataloader_num_workers", "1",
        # The 840 training studies decode to about 50 MiB: every epoch after the first skips PNG decoding.
        "--cache_decoded_studies_mb", "256",
        "--count_flops", "true",
        "--cpu",
        *(["--mlm_always_mask_words", ",".join(FINDING_WORDS)] if args.mlm_mask == "finding_words" else []),
    ]  # fmt: skip
    frontal_common = [*common]
    frontal_common[frontal_common.index("--dataset_path") + 1] = str(out / "data_frontal_only")
    return DemoSetup(data, prompts, json.dumps(overrides), common, frontal_common)


# ---------------------------------------------------------------------------------------------------------------
# 3-5. training stages
# ---------------------------------------------------------------------------------------------------------------


def alignment_budget(args: argparse.Namespace) -> list[str]:
    """The adapter stages' schedule (ALTA and the baselines on adapters)."""
    return [
        "--max_steps", str(args.align_steps), "--schedule_steps", str(args.align_steps),
        "--learning_rate", str(args.align_learning_rate), "--augment", str(args.augment).lower(),
        "--mask_ratio", str(args.align_mask_ratio),
    ]  # fmt: skip


@dataclass
class Stage:
    """One training run of the demo: an `align.py` process writing `OUTPUT/<name>/`."""

    name: str
    argv: list[str]  # align.py arguments, --output_dir included
    after: tuple[str, ...] = ()  # stages whose model this one starts from


def backbone_stage(args: argparse.Namespace, out: Path, setup: DemoSetup) -> Stage:
    """The backbone stage, adapters off (see `--backbone_mode`): a stand-in for the MRM + CXR-BERT towers that ALTA
    starts from, without augmentation."""
    extra = ["--local_loss_weight", "0", "--mlm_loss_weight", "0"] if args.backbone_mode == "backbone" else []
    return _stage(
        "backbone",
        out,
        setup.common,
        ["--preset", "alta-demo", "--config_overrides", setup.sizes, "--adapter", args.backbone_mode,
         "--max_steps", str(args.pretrain_steps), "--schedule_steps", str(args.pretrain_steps),
         "--learning_rate", str(args.learning_rate), "--augment", "false",
         "--mask_ratio", str(args.backbone_mask_ratio), "--norm_pix_loss", args.backbone_norm_pix, *extra],
    )  # fmt: skip


def alta_stage(args: argparse.Namespace, out: Path, setup: DemoSetup) -> Stage:
    """ALTA: adapters on the frozen backbone, the full ALTA objective."""
    return _stage("aligned", out, setup.common, [*_on_backbone(out), *alignment_budget(args)], after=("backbone",))


def adapter_baseline_stages(args: argparse.Namespace, out: Path, setup: DemoSetup) -> list[Stage]:
    """ALTA at the same step budget on frontal-only inputs, and from a random (not pretrained) backbone."""
    budget = alignment_budget(args)
    return [
        _stage("baseline_frontal_only", out, setup.frontal_common, [*_on_backbone(out), *budget], after=("backbone",)),
        _stage(
            "baseline_random_backbone",
            out,
            setup.common,
            ["--preset", "alta-demo", "--config_overrides", setup.sizes, *budget],
        ),
    ]


def clip_stage(args: argparse.Namespace, out: Path, setup: DemoSetup, name: str, steps: int) -> Stage:
    """CLIP trained from scratch: the whole model (adapters off), the global contrastive loss only, no patch masking,
    on the same studies and reports (all views), at the backbone stage's learning rate."""
    return _stage(
        name,
        out,
        setup.common,
        ["--preset", "alta-demo", "--config_overrides", setup.sizes, "--adapter", "backbone",
         "--local_loss_weight", "0", "--mlm_loss_weight", "0", "--reconstruction_loss_weight", "0",
         "--mask_ratio", "0", "--max_steps", str(steps), "--schedule_steps", str(steps),
         "--learning_rate", str(args.learning_rate), "--augment", "false"],
    )  # fmt: skip


def _stage(name: str, out: Path, common: list[str], extra: list[str], after: tuple[str, ...] = ()) -> Stage:
    return Stage(name, [*common, "--output_dir", str(out / name), *extra], after)


def _on_backbone(out: Path) -> list[str]:
    return ["--model_name_or_path", str(out / "backbone" / "model")]


def run_stages(stages: list[Stage], out: Path, jobs: int, threads: int) -> dict[str, dict[str, Any]]:
    """Run every stage as its own `training/align.py` process, at most `jobs` at a time, each with `threads` torch
    threads; a stage starts once the stages it builds on have finished, otherwise in list order.

    Each process writes its log to `OUTPUT/logs/<name>.log`. Returns each stage's results (`train_results.json` of
    its exported model, plus `model_dir`). A stage that fails, or stops on a signal, stops the demo with an error
    naming the stage, its exit status and its log; the stages still running are sent SIGTERM (each saves a
    checkpoint and exits) before the error is raised, and so are they when the demo itself is interrupted.
    """
    import subprocess

    from tqdm.auto import tqdm

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    script = Path(align.__file__).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    names = [stage.name for stage in stages]
    for stage in stages:
        unknown = [name for name in stage.after if name not in names[: names.index(stage.name)]]
        if unknown:
            raise ValueError(f"stage {stage.name!r} builds on {unknown}, which no earlier stage trains")
    pending, running, results = list(stages), {}, {}
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    bar = tqdm(total=len(stages), desc="demo training runs", unit="run")
    try:
        while pending or running:
            for stage in list(pending):
                if len(running) >= max(1, jobs):
                    break
                if all(name in results for name in stage.after):
                    pending.remove(stage)
                    log = (logs / f"{stage.name}.log").open("w")
                    logger.info("== %s (log: %s)", stage.name, log.name)
                    process = subprocess.Popen(
                        [sys.executable, str(script), *stage.argv], stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                    running[stage.name] = (process, log)
            time.sleep(0.2)
            for name, (process, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                log.close()
                if code != 0:
                    tail = "".join(Path(log.name).read_text(errors="replace").splitlines(True)[-15:])
                    raise RuntimeError(
                        f"demo stage {name!r} exited with status {code} (log: {log.name}); its last lines:\n{tail}"
                    )
                model_dir = out / name / "model"
                results[name] = {
                    **json.loads((model_dir / "train_results.json").read_text()),
                    "model_dir": str(model_dir),
                }
                logger.info("== %s done: %d steps in %.0f s", name, results[name]["global_step"],
                            results[name]["train_seconds"])  # fmt: skip
                bar.update(1)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
        for process, _log in running.values():
            process.terminate()  # align.py saves a checkpoint and exits 143
        for process, log in running.values():
            process.wait()
            log.close()
    return results


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------------------------
# 6. evaluation and the results file
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DemoRun:
    """One row of the table: an `align.py` result, how it is evaluated and what it builds on."""

    result: dict[str, Any]
    title: str
    frontal_only: bool = False
    on_backbone: bool = False  # trained on the backbone stage's output (its cost is added in the table)


def evaluate_runs(runs: dict[str, DemoRun], setup: DemoSetup, out: Path) -> dict[str, dict[str, Any]]:
    """Every run on the held-out test studies (`evaluation.demo.evaluate_demo`), with its training cost."""
    from evaluation.demo import evaluate_demo

    results: dict[str, Any] = {}
    for name, run in runs.items():
        metrics = evaluate_demo(
            run.result["model_dir"],
            setup.data["test"],
            output_dir=out / "eval" / name,
            frontal_only=run.frontal_only,
            class_prompts=setup.prompts,
        )
        results[name] = {
            **metrics,
            "title": run.title,
            "trainable_parameters": run.result["trainable_parameters"],
            "total_parameters": run.result["total_parameters"],
            "train_seconds": run.result["train_seconds"],
            "train_steps": run.result["global_step"],
            "flops_per_step": run.result.get("flops_per_step"),
            "train_flops": run.result.get("train_flops"),
            "on_backbone": run.on_backbone,
            "model_dir": run.result["model_dir"],
        }
    return results


def write_results(
    out: Path, setup: DemoSetup, runs: dict[str, DemoRun], results: dict[str, Any], started: float
) -> dict[str, Any]:
    """`eval_results.json`: the aligned model's figures at the top level, every run under `runs`."""
    aligned, backbone = runs["aligned"].result, runs["backbone_before_alta"].result
    test = setup.data["test"]
    summary = {
        **{k: results["aligned"][k] for k in ("zero_shot_accuracy", "i2t_p@5", "t2i_p@5")},
        "trainable_parameters": aligned["trainable_parameters"],
        "total_parameters": aligned["total_parameters"],
        "train_seconds": aligned["train_seconds"],
        "backbone_pretrain_seconds": backbone["train_seconds"],
        "model_dir": aligned["model_dir"],
        "chance_zero_shot_accuracy": 1.0 / len(setup.prompts),
        "num_test_studies": len(test),
        "pipeline_example": run_pipeline(aligned["model_dir"], test, list(setup.prompts)),
        "runs": results,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_text(out / "eval_results.json", json.dumps(summary, indent=2, default=str))
    return summary


def train_runs(args: argparse.Namespace, out: Path, setup: DemoSetup) -> dict[str, DemoRun]:
    """Every training stage: the backbone, ALTA on it, then (unless `--no_baselines`) the baselines, `--jobs` at a
    time (`run_stages`)."""
    short, long = args.clip_steps
    stages = [backbone_stage(args, out, setup)]
    if not args.no_baselines:  # the longest run first, beside the backbone: the two lanes end about together
        stages.append(clip_stage(args, out, setup, "clip_scratch_total_time", long))
    stages.append(alta_stage(args, out, setup))
    if not args.no_baselines:
        stages += [
            *adapter_baseline_stages(args, out, setup),
            clip_stage(args, out, setup, "clip_scratch_alta_time", short),
        ]
    results = run_stages(stages, out, args.jobs, args.threads)
    objective = (
        "masked image + report modeling" if args.backbone_mode == "mae" else "masked image modeling + contrastive"
    )
    # The backbone is evaluated too, so the table shows what the adapter stage adds to it.
    runs = {
        "aligned": DemoRun(results["aligned"], "aligned (ALTA adapters on the backbone)", on_backbone=True),
        "backbone_before_alta": DemoRun(results["backbone"], f"backbone before ALTA ({objective})"),
    }
    if args.no_baselines:
        return runs
    runs["baseline_random_backbone"] = DemoRun(
        results["baseline_random_backbone"], "baseline: ALTA on a random backbone"
    )
    runs["baseline_frontal_only"] = DemoRun(
        results["baseline_frontal_only"], "baseline: ALTA on frontal-only inputs", True, on_backbone=True
    )
    runs["clip_scratch_alta_time"] = DemoRun(
        results["clip_scratch_alta_time"], "baseline: CLIP from scratch, wall-clock of the ALTA stage"
    )
    runs["clip_scratch_total_time"] = DemoRun(
        results["clip_scratch_total_time"], "baseline: CLIP from scratch, wall-clock of backbone + ALTA"
    )
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo (module docstring); returns the contents of `eval_results.json`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    setup = prepare(args, out)
    runs = train_runs(args, out, setup)
    results = evaluate_runs(runs, setup, out)
    summary = write_results(out, setup, runs, results, started)
    markdown = table(results, summary["chance_zero_shot_accuracy"], runs["backbone_before_alta"].result)
    atomic_write_text(out / "table.md", markdown + "\n")
    print(markdown)
    print(f"wrote {out / 'eval_results.json'} ({summary['total_seconds']:.0f} s)")
    return summary


def run_pipeline(model_dir: str, test, labels: list[str]) -> dict[str, Any]:
    """The transformers zero-shot pipeline on one held-out frontal image."""
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=model_dir, trust_remote_code=True)
    row = test[0]
    scores = classifier(row["frontal"], candidate_labels=[label.lower() for label in labels], hypothesis_template="{}")
    return {"study_id": row["study_id"], "label": row["label"], "scores": scores}


def _flops(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e12:.1f} T"


def table(results: dict[str, dict[str, Any]], chance: float, backbone: dict[str, Any] | None = None) -> str:
    """The README table: one row per run. Runs trained on the backbone show the backbone stage's seconds and FLOPs
    after a '+' (what they cost in all)."""
    lines = [
        "| run (held-out studies) | zero-shot acc | i2t P@5 | t2i P@5 | trainable / total params | steps | train s "
        "| train FLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        seconds, flops = f"{r['train_seconds']:.0f}", _flops(r.get("train_flops"))
        if r.get("on_backbone") and backbone is not None:
            seconds += f" + {backbone['train_seconds']:.0f}"
            flops += f" + {_flops(backbone.get('train_flops'))}"
        lines.append(
            f"| {r.get('title', name)} | {r['zero_shot_accuracy']:.3f} | {r['i2t_p@5']:.3f} | {r['t2i_p@5']:.3f} | "
            f"{r['trainable_parameters']:,} / {r['total_parameters']:,} | {r['train_steps']} | {seconds} | {flops} |"
        )
    lines.append(f"(chance: zero-shot {chance:.3f}; '+': the backbone stage the run starts from)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
