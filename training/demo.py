"""The built-in demo, end to end on a CPU in minutes (the README's main job):

    python -m training.demo [--output_dir outputs/demo] [--num_studies 1200] [--quick]

1. generate synthetic radiograph-like studies with paired reports (`processing/demo_data.py`): frontal and lateral
   views, priors with change, six classes (the five CheXpert 5x200 findings and No Finding), some effusions
   visible only on the lateral view; train / validation / test splits;
2. build a word-level WordPiece vocabulary from the reports (the demo has no CXR-BERT);
3. obtain a small backbone the way ALTA expects one: masked image + report modeling with adapters off
   (`align.py --adapter mae`, the MRM stage);
4. align it with ALTA adapters through `training/align.py` (the backbone frozen);
5. train two baselines with the same step budget: alignment from a random (not pretrained) backbone, and
   alignment on frontal-only inputs;
6. evaluate on held-out test studies (zero-shot accuracy over the six classes, image-to-text and text-to-image
   P@5), run the zero-shot pipeline on a held-out image, and write `outputs/demo/eval_results.json` plus PNGs.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before torch loads the OpenMP runtime: idle threads sleep instead of spinning (training/threads.py).
import training.openmp_defaults  # noqa: F401, I001

import torch

from modeling_alta.configuration_alta import STUDY_SLOTS
from processing.demo_data import strip_boilerplate
from training import align


logger = logging.getLogger("alta.demo")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def run_align(name: str, out: Path, common: list[str], extra: list[str]) -> dict[str, Any]:
    logger.info("== %s", name)
    return align.main([*common, "--output_dir", str(out / name), *extra])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--num_studies", type=int, default=1200)
    parser.add_argument(
        "--image_size",
        type=int,
        default=146,
        help="side of the generated radiographs (the model resizes to 146, crops 128)",
    )
    parser.add_argument("--pretrain_steps", type=int, default=500)
    parser.add_argument("--align_steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="peak learning rate of the backbone stage")
    parser.add_argument(
        "--align_learning_rate",
        type=float,
        default=3e-3,
        help="peak learning rate of the adapter stages (ALTA and the baselines): the adapter set is small and starts "
        "at zero, 150 steps at 5e-4 leave it where it started",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="random affine + jitter while aligning (the recipe; off by default: in a 150-step demo it costs more than "
        "it regularises, measured zero-shot 0.37 with it and 0.41 without)",
    )
    parser.add_argument(
        "--backbone_mode",
        choices=("mae", "backbone"),
        default="backbone",
        help="backbone stage, adapters off: masked image + report modeling only ('mae', the MRM stage), or masked image "
        "modeling + the global contrastive loss ('backbone', default). Measured on this demo: 400 MRM steps leave image "
        "features a linear probe classifies at 0.37 (raw 16x16 pixels: 0.85); 500 'backbone' steps reach 0.72",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--study_pooling",
        choices=("all", "present"),
        default="all",
        help="how a study's slot embeddings are pooled: all four slots as ALTA trains, or the present views only",
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
    parser.add_argument("--no_baselines", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few studies (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_studies, args.pretrain_steps, args.align_steps, args.batch_size = 120, 3, 3, 8
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1-2. data and vocabulary
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
    sizes = json.dumps(overrides)
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
        "--cpu",
    ]  # fmt: skip
    align_budget = [
        "--max_steps", str(args.align_steps), "--schedule_steps", str(args.align_steps),
        "--learning_rate", str(args.align_learning_rate), "--augment", str(args.augment).lower(),
    ]  # fmt: skip

    # 3. backbone, adapters off (see --backbone_mode)
    backbone = run_align(
        "backbone",
        out,
        common,
        ["--preset", "alta-demo", "--config_overrides", sizes, "--adapter", args.backbone_mode,
         "--max_steps", str(args.pretrain_steps), "--schedule_steps", str(args.pretrain_steps),
         "--learning_rate", str(args.learning_rate),
         # A stand-in for MRM + CXR-BERT, which ALTA starts from: no augmentation, and without the local and MLM
         # terms, which slow the global alignment of a backbone built from scratch (3.19 -> 3.06 instead of
         # 3.19 -> 2.77 in 500 steps on this demo).
         "--augment", "false", *(["--local_loss_weight", "0", "--mlm_loss_weight", "0"]
                                 if args.backbone_mode == "backbone" else [])],
    )  # fmt: skip
    # 4. ALTA: adapters on the frozen backbone
    aligned = run_align("aligned", out, common, ["--model_name_or_path", backbone["model_dir"], *align_budget])
    # The backbone is evaluated too, so the table shows what the adapter stage adds to it.
    runs = {"aligned": (aligned, False), "backbone_before_alta": (backbone, False)}
    # 5. baselines at the same alignment step budget
    if not args.no_baselines:
        random_backbone = run_align(
            "baseline_random_backbone",
            out,
            common,
            ["--preset", "alta-demo", "--config_overrides", sizes, *align_budget],
        )
        frontal_common = [*common]
        frontal_common[frontal_common.index("--dataset_path") + 1] = str(out / "data_frontal_only")
        frontal_run = run_align(
            "baseline_frontal_only",
            out,
            frontal_common,
            ["--model_name_or_path", backbone["model_dir"], *align_budget],
        )
        runs["baseline_random_backbone"] = (random_backbone, False)
        runs["baseline_frontal_only"] = (frontal_run, True)

    # 6. evaluation on the held-out test studies, and the pipeline on a held-out image
    from evaluation.demo import evaluate_demo

    test = data["test"]
    results: dict[str, Any] = {}
    for name, (run, frontal_inputs) in runs.items():
        metrics = evaluate_demo(
            run["model_dir"], test, output_dir=out / "eval" / name, frontal_only=frontal_inputs, class_prompts=prompts
        )
        results[name] = {
            **metrics,
            "trainable_parameters": run["trainable_parameters"],
            "total_parameters": run["total_parameters"],
            "train_seconds": run["train_seconds"],
            "train_steps": run["global_step"],
            "model_dir": run["model_dir"],
        }
    pipeline_result = run_pipeline(aligned["model_dir"], test, list(prompts))
    chance = 1.0 / len(prompts)
    summary = {
        **{k: results["aligned"][k] for k in ("zero_shot_accuracy", "i2t_p@5", "t2i_p@5")},
        "trainable_parameters": aligned["trainable_parameters"],
        "total_parameters": aligned["total_parameters"],
        "train_seconds": aligned["train_seconds"],
        "backbone_pretrain_seconds": backbone["train_seconds"],
        "model_dir": aligned["model_dir"],
        "chance_zero_shot_accuracy": chance,
        "num_test_studies": len(test),
        "pipeline_example": pipeline_result,
        "runs": results,
        "total_seconds": time.perf_counter() - started,
    }
    (out / "eval_results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(_table(results, chance))
    print(f"wrote {out / 'eval_results.json'}")
    return summary


def run_pipeline(model_dir: str, test, labels: list[str]) -> dict[str, Any]:
    """The transformers zero-shot pipeline on one held-out frontal image."""
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=model_dir, trust_remote_code=True)
    row = test[0]
    scores = classifier(row["frontal"], candidate_labels=[label.lower() for label in labels], hypothesis_template="{}")
    return {"study_id": row["study_id"], "label": row["label"], "scores": scores}


def _table(results: dict[str, dict[str, Any]], chance: float) -> str:
    lines = [
        "| run | zero-shot acc | i2t P@5 | t2i P@5 | trainable / total | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['zero_shot_accuracy']:.3f} | {r['i2t_p@5']:.3f} | {r['t2i_p@5']:.3f} | "
            f"{r['trainable_parameters']:,} / {r['total_parameters']:,} | {r['train_seconds']:.0f} |"
        )
    lines.append(f"(chance: zero-shot {chance:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
