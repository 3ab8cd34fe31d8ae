"""Run Python in a fresh interpreter where this repository's packages cannot be imported.

Used to prove that a saved folder loads as Hub custom code (``trust_remote_code=True``) for a user who has not
installed this package. An editable install would otherwise make the packages importable from anywhere, so the
child process also installs an import blocker for the repository's top-level names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


BLOCKED = ("modeling_alta", "configuration", "processing", "training", "inference", "evaluation")

_PRELUDE = f"""
import sys
class _RepoBlocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked: " + name + " must not be importable in this test")
        return None
sys.meta_path.insert(0, _RepoBlocker())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""


def run_isolated(code: str, cwd: str | Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run `code` in a child interpreter with `cwd` as working directory (outside the repo); return its stdout.

    Raises `AssertionError` with the child's output when it exits non-zero.
    """
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    if env:
        child_env.update(env)
    script = _PRELUDE + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=str(cwd), env=child_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"isolated child failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        )
    return proc.stdout
