"""The entry points' OpenMP spin count: set before torch loads, never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


def test_the_entry_points_keep_freed_blocks_for_reuse() -> None:
    # A step's large buffers are allocated and freed every step; glibc's default gives them back to the system, and
    # touching them again costs a page fault per 4 KiB page. The entry points let glibc keep them for reuse.
    import platform

    if not platform.libc_ver()[0] == "glibc":
        pytest.skip("glibc malloc only")
    count = (
        "import resource, torch\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n    x = torch.empty(16 * 2**20)\n    x.fill_(1.0)\n    del x\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"
    )
    plain = int(_child(count))
    kept = int(_child("import training.align\n" + count).splitlines()[-1])
    assert plain > 20 * 16 * 2**20 // 4096 // 2  # about one fault per page of every 64 MiB buffer
    assert kept < plain / 5, (kept, plain)
    # The user's own allocator settings win.
    assert _child("from training.threads import configure_allocator as c; print(c())") == "True"
    assert (
        _child("from training.threads import configure_allocator as c; print(c())", MALLOC_TRIM_THRESHOLD_="1")
        == "False"
    )
