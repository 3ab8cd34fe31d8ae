"""The benchmark registry: one declaration per task drives `alta-evaluate`, its help and the README table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.cli import build_parser
from evaluation.registry import PROTOCOL_MODULES, InputFile, Protocol, get_protocol, markdown_table, protocols


REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "chexpert5x200-zeroshot",
    "chexpert5x200-i2t",
    "rsna-zeroshot",
    "chexpert8x200-t2i",
    "chexpert8x200-i2i",
    "demo",
}


def test_every_task_is_registered_once():
    registered = protocols()
    assert set(registered) == EXPECTED
    assert all(isinstance(p, Protocol) and p.metrics and p.inputs for p in registered.values())
    assert len(PROTOCOL_MODULES) == 4  # one module per benchmark, the 5x200 and 8x200 modules hold two tasks each


def test_unknown_task_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown task 'nope'.*chexpert5x200-zeroshot"):
        get_protocol("nope")


def test_help_lists_each_task_with_its_files_and_columns():
    top = subprocess.run(
        [sys.executable, "-m", "evaluation.cli", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name in EXPECTED:
        assert name in top
    sub = build_parser()._subparsers._group_actions[0].choices["chexpert8x200-t2i"].format_help()
    assert "--query-csv" in sub and "columns: Text, Variable" in sub and "metrics: p@5, p@10, p@50" in sub


def test_input_files_become_flags():
    args = build_parser().parse_args(["rsna-zeroshot", "--model", "m", "--list", "l.txt"])
    assert args.list == "l.txt" and args.labels_csv is None and args.data_root == "." and args.n_splits == 10
    with pytest.raises(SystemExit):  # --csv is a required input of chexpert5x200-zeroshot
        build_parser().parse_args(["chexpert5x200-zeroshot", "--model", "m"])


def test_readme_table_is_generated_from_the_registry():
    assert markdown_table() in (REPO_ROOT / "README.md").read_text()


def test_description_marks_optional_inputs():
    protocol = Protocol(
        name="x",
        summary="s",
        inputs=(InputFile("--a", "file a", ("c1",)), InputFile("--b", "file b", required=False)),
        metrics=("m",),
        run=lambda model, args, common: {},
    )
    text = protocol.description()
    assert "--a: file a (columns: c1)" in text and "--b [optional]: file b" in text and "metrics: m" in text


METRIC_IMPORT = """
import evaluate
from evaluation.metrics import metric_path
m = evaluate.load(str(metric_path("alta_precision_at_k")))
print(m.compute(predictions=[[1, 0]], references=[1], k=[1])["p@1"])
"""


def test_metric_modules_resolve_from_a_clean_interpreter(tmp_path):
    # evaluate copies each module into its cache and imports it from there: the module's own
    # `from evaluation import protocols` must resolve in a fresh interpreter started outside the repository (the
    # installed package, not the working directory, provides `evaluation`).
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", METRIC_IMPORT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1.0"
