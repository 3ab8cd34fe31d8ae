"""The README's main job in its `--quick` form: every stage runs and the results file has the promised keys."""

from __future__ import annotations

import json
from pathlib import Path

from training.demo import main


def test_demo_quick_writes_eval_results(tmp_path: Path) -> None:
    summary = main(["--quick", "--output_dir", str(tmp_path / "demo")])
    results = json.loads((tmp_path / "demo" / "eval_results.json").read_text())
    for key in ("zero_shot_accuracy", "i2t_p@5", "t2i_p@5", "trainable_parameters", "total_parameters",
                "train_seconds", "model_dir"):  # fmt: skip
        assert key in results, key
    assert set(results["runs"]) == {
        "aligned",
        "backbone_before_alta",
        "baseline_random_backbone",
        "baseline_frontal_only",
        "clip_scratch_alta_time",
        "clip_scratch_total_time",
    }
    for name, run in results["runs"].items():  # every row reports its cost, FLOPs counted on one step
        assert run["train_steps"] > 0 and run["train_seconds"] > 0, name
        assert run["flops_per_step"] > 0 and run["train_flops"] == run["flops_per_step"] * run["train_steps"], name
    clip = results["runs"]["clip_scratch_total_time"]
    assert clip["trainable_parameters"] > results["trainable_parameters"]  # the whole model trains
    table = (tmp_path / "demo" / "table.md").read_text()
    assert "CLIP from scratch" in table and "train FLOPs" in table
    curve = json.loads(Path(results["model_dir"], "train_results.json").read_text())["loss_curve"]
    assert curve and {"step", "contrastive_loss", "total_loss"} <= set(curve[-1])
    assert 0.0 <= results["zero_shot_accuracy"] <= 1.0
    assert results["chance_zero_shot_accuracy"] == 1 / 6
    assert 0 < results["trainable_parameters"] < results["total_parameters"]
    assert Path(results["model_dir"], "model.safetensors").is_file()
    scores = results["pipeline_example"]["scores"]
    assert len(scores) == 6 and abs(sum(s["score"] for s in scores) - 1.0) < 1e-4
    pngs = list((tmp_path / "demo" / "eval").rglob("*.png"))
    assert len(pngs) >= 3
    assert summary["model_dir"] == results["model_dir"]

    # the spread and probe scripts of benchmarks/RESULTS.md §8 run on the demo's output
    import importlib.util
    import sys

    def script(name):
        path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(spec.name, module)
        spec.loader.exec_module(module)
        return module

    spread = script("demo_seeds").bootstrap(tmp_path / "demo", resamples=50)  # recomputes and checks each accuracy
    assert "aligned - random backbone" in spread and "CLIP from scratch" in spread
    probes = script("demo_probes").main(["features", "--run", str(tmp_path / "demo")])
    assert set(probes) >= {"raw 16x16 pixels", results["model_dir"]} and all(0 <= v <= 1 for v in probes.values())


def test_align_mask_ratio_reaches_the_adapter_stages_only_when_given() -> None:
    from training.demo import alignment_budget, parse_args

    default = alignment_budget(parse_args([]))
    assert "--mask_ratio" not in default  # the preset's ratio, the recipe's 0.75
    chosen = alignment_budget(parse_args(["--align_mask_ratio", "0.5"]))
    assert chosen[chosen.index("--mask_ratio") + 1] == "0.5"
