"""The benchmark scripts run in their `--quick` mode (tiny configs, one round), so they cannot rot.

Nothing here is timed or compared with a threshold: the test only checks that each script finishes and prints its
markdown table. Figures live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = {
    "bench_inference.py": ["## Image embedding", "| dtype | batch | ALTA images/s", "## Arithmetic limit"],
    "bench_missing_views.py": ["## Study embedding with missing views", "| frames in the batch | encoded (shared)"],
    "bench_onnx.py": [
        "## Image embedding on CPU",
        "| batch | PyTorch images/s | onnxruntime images/s",
        "- cpu flags:",
    ],
    "bench_optimizer.py": ["## AdamW step", "| fused (adamw_torch_fused) |"],
    "bench_training.py": ["## Training step", "## Where the step goes", "## Local loss"],
    "bench_zeroshot.py": ["## Zero-shot CheXpert 5x200", "| dtype | prompts s (once)"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_quick_run_prints_its_tables(script: str, request: pytest.FixtureRequest) -> None:
    if script == "bench_onnx.py":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    command = [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", "--threads", "1"]
    if script == "bench_zeroshot.py":  # the tokenizer vocabulary lives with the parity goldens
        command += ["--tokenizer", str(request.getfixturevalue("parity_dir") / "BiomedVLP-CXR-BERT-specialized")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for marker in CASES[script]:
        assert marker in done.stdout, f"{marker!r} missing from the output of {script}:\n{done.stdout[-2000:]}"


@pytest.mark.parametrize(
    ("script", "marker"),
    [
        ("bench_preprocess.py", "images/s"),
        ("bench_align.py", "| 2 processes (gloo) |"),
        ("bench_embed.py", "| 1 | fp32 | 4 | 1 |"),  # alta-embed against the model alone
        ("bench_checkpoint_faults.py", "| `verify_checkpoint`"),
        ("bench_issue14.py", "| text tower + MLM copy fwd+bwd, dropout"),
        ("bench_contention.py", "| this checkout, package | yes |"),
        ("bench_align_demo.py", "| this checkout |"),
        ("bench_allocator.py", "| entry points (`configure_allocator`) |"),
    ],
)
def test_quick_run_of_data_and_training_benchmarks(
    script: str, marker: str, real_cxr_dir: Path, request: pytest.FixtureRequest
) -> None:
    command = [sys.executable, str(BENCHMARKS / script), "--quick"]
    if script == "bench_issue14.py":  # the tokenizer vocabulary lives with the parity goldens
        command += ["--tokenizer", str(request.getfixturevalue("parity_dir") / "BiomedVLP-CXR-BERT-specialized")]
    if script == "bench_preprocess.py":
        command += ["--images", str(real_cxr_dir / "nih")]
    if script in ("bench_embed.py", "bench_issue14.py"):
        command += ["--device", "cpu", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCHMARKS.parent)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker in done.stdout, done.stdout[-2000:]
