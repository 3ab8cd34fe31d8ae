"""The entry points' OpenMP spin count: set before torch loads, never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

from training.threads import DEFAULTS, openmp_environment

from ..conftest import REPO_ROOT


def _child(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    clean.update(PYTHONPATH=str(REPO_ROOT), **env)
    proc = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_defaults_unless_the_user_chose() -> None:
    assert openmp_environment({}) == DEFAULTS == {"GOMP_SPINCOUNT": "1000"}
    assert openmp_environment({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert openmp_environment({"GOMP_SPINCOUNT": "10000"}) == {}


def test_the_entry_points_set_it_before_torch_loads() -> None:
    show = "import os, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    # training/align.py as a script and as a module, and the demo
    for module in ("training.align", "training.demo"):
        assert _child(f"import {module}; {show}") == "1000", module
    assert _child(f"import training.align; {show}", OMP_WAIT_POLICY="PASSIVE") == "None"  # the user's policy
    assert _child(f"import training.align; {show}", GOMP_SPINCOUNT="50") == "50"
    # too late once torch is loaded: nothing is set (it would have no effect)
    assert _child(f"import torch, training.openmp_defaults as m; print(m.APPLIED); {show}") == "False\nNone"
    # the console scripts go through training.threads
    from tomllib import loads

    scripts = loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["alta-embed"] == "training.threads:alta_embed"
    assert scripts["alta-evaluate"] == "training.threads:alta_evaluate"
    code = "import sys; sys.argv = ['alta-embed', '--help']\nimport training.threads as t\ntry:\n    t.alta_embed()\n"
    code += "except SystemExit:\n    import os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _child(code).endswith("1000")
