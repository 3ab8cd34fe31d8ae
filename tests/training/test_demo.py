"""The README's main job in its `--quick` form: every stage runs and the results file has the promised keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_align_mask_ratio_reaches_every_adapter_stage() -> None:
    from training.demo import alignment_budget, parse_args

    default = alignment_budget(parse_args([]))
    assert default[default.index("--mask_ratio") + 1] == "0.5"  # the demo's, not the recipe's 0.75
    chosen = alignment_budget(parse_args(["--align_mask_ratio", "0.75"]))
    assert chosen[chosen.index("--mask_ratio") + 1] == "0.75"


def test_a_stage_must_come_after_the_stages_it_builds_on(tmp_path: Path) -> None:
    from training.demo import Stage, run_stages

    stages = [
        Stage("aligned", ["--output_dir", str(tmp_path / "aligned")], after=("backbone",)),
        Stage("backbone", []),
    ]
    with pytest.raises(ValueError, match="'aligned' builds on \\['backbone'\\]"):
        run_stages(stages, tmp_path, jobs=2, threads=1)
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())  # nothing was started


def test_a_failing_stage_is_named_with_its_status_and_log(tmp_path: Path) -> None:
    from training.demo import Stage, run_stages

    stages = [Stage("broken", ["--output_dir", str(tmp_path / "broken")])]  # neither a model nor a preset
    with pytest.raises(RuntimeError, match="stage 'broken' exited with status 1") as error:
        run_stages(stages, tmp_path, jobs=2, threads=1)
    log = tmp_path / "logs" / "broken.log"
    assert str(log) in str(error.value) and "Give --model_name_or_path" in str(error.value)


SIGTERM_DEMO = """
import sys
from pathlib import Path
from training import demo

out = Path(sys.argv[1])
args = demo.parse_args(["--quick", "--output_dir", str(out)])
setup = demo.prepare(args, out)
stage = demo.clip_stage(args, out, setup, "long_run", 100000)
demo.run_stages([stage], out, jobs=2, threads=1)
"""


def test_sigterm_to_the_demo_stops_its_training_processes(tmp_path: Path) -> None:
    """A real SIGTERM to the demo: the running `align.py` child is terminated too (it saves a checkpoint and exits
    143) and the demo exits 143, instead of leaving an orphan training for hours."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from training.checkpoints import CHECKPOINT_DIR

    root = Path(__file__).resolve().parents[2]
    demo = subprocess.Popen([sys.executable, "-c", SIGTERM_DEMO, str(tmp_path)], cwd=root, env={**os.environ})
    log = tmp_path / "logs" / "long_run.log"
    deadline = time.monotonic() + 120
    while (
        demo.poll() is None
        and time.monotonic() < deadline
        and not (log.exists() and "loss=" in log.read_text(errors="replace"))
    ):
        time.sleep(0.5)
    assert log.exists() and "loss=" in log.read_text(errors="replace"), "the training process never got going"
    children = [  # /proc/PID/stat: "pid (comm) state ppid ..."
        stat.parent.name for stat in Path("/proc").glob("[0-9]*/stat") if _parent_pid(stat) == demo.pid
    ]
    assert children
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=120) == 128 + signal.SIGTERM
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "interrupted (SIGTERM)" in log.read_text(errors="replace")
    assert list((tmp_path / "long_run" / CHECKPOINT_DIR).glob("step-*"))


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
