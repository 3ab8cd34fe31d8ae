"""Local `evaluate` metric modules for the ALTA benchmarks, and `load_metric` to load them offline.

The Hub copies of community metrics cannot be loaded without a network (`evaluate.load("accuracy")` fails
offline), so the benchmarks ship here as `<name>/<name>.py` modules loaded by path. Each module's `_compute`
delegates to `evaluation.protocols`, so the numbers equal the plain functions.

How a module finds `evaluation.protocols`: `evaluate.load(path)` copies the module file into the modules cache and
imports it from there, so the file cannot import its neighbours by relative path. It imports the repository
package absolutely (`from evaluation import protocols`), which works whenever `evaluation` is importable: always
through `load_metric` (this package is then already imported), in an installed checkout (`pip install -e .`) and
under pytest (`pythonpath = ["."]`). Otherwise loading fails with an `ImportError` that says so. The import sits
inside a `try:` on purpose: evaluate scans top-level `import` lines and would otherwise ask to
`pip install evaluation`. Every metric folder has an `__init__.py`, so setuptools' `packages.find` ships the
modules with the `evaluation` package without package-data lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES: tuple[str, ...] = ("alta_zero_shot_accuracy", "alta_precision_at_k", "alta_rsna_zero_shot")


def metric_path(name: str) -> Path:
    """The folder of a local metric module, e.g. `metric_path("alta_precision_at_k")`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown ALTA metric {name!r}; available: {list(METRIC_NAMES)}")
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"metric module {path / f'{name}.py'} is missing from the installation")
    return path


def load_metric(name: str, **kwargs: Any):
    """Load a local ALTA metric with `evaluate.load` by path (no network).

    Args:
        name: one of `METRIC_NAMES`.
        **kwargs: passed to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`).

    Returns:
        the `evaluate.EvaluationModule`; use `add_batch(...)` then `compute(...)`.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "load_metric", "metric_path"]
