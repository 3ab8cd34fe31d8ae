"""The OpenMP wait policy of the package's command-line programs (imports nothing heavy: it must run before torch).

PyTorch's CPU wheels run their thread pool on GNU OpenMP (libgomp). With no `OMP_WAIT_POLICY` set, a worker thread
that finishes its share of a parallel region spins for up to 300,000 iterations before it sleeps. Alone on idle cores
that saves a wake-up; with other busy processes on the cores (another job, DataLoader workers, a shared machine) the
spinning threads take the cores from the threads doing the work, and every region waits for its slowest thread.
ALTA's step issues its parallel regions back to back, so its threads almost never sleep: with one competing busy
process the step became 1.5x slower than the reference's, and on a shared 2-core machine the demo-size step ran
about 10x slower than with `OMP_WAIT_POLICY=PASSIVE` (benchmarks/RESULTS.md §12, `benchmarks/bench_contention.py`).

`PASSIVE` (sleep at once) fixed that but costs a wake-up per region on an idle machine: the demo-size step took 1.3x
the default's time there. The package sets `GOMP_SPINCOUNT=1000`, a short spin before sleeping, which measured as
fast as or faster than `PASSIVE` in every case (idle: 0.87-0.97 of its step time; beside one busy process 0.81-1.01,
beside three 0.97), and 2.5x faster than the default beside one busy process at full size.

libgomp reads these once, when torch loads it, so they cannot be changed from Python afterwards: the entry points
(`training/align.py`, `training/demo.py`, `alta-embed`, `alta-evaluate`) call `configure_openmp()` before they import
torch. A policy or spin count the user set (`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) is kept.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping


# Set when the user set none of these.
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
DEFAULTS = {"GOMP_SPINCOUNT": "1000"}


def openmp_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to `environ` (default: this process's): `DEFAULTS` unless the user chose a policy."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in USER_SETTINGS):
        return {}
    return dict(DEFAULTS)


# The user's own allocator choice wins: glibc's variables, or another malloc preloaded (jemalloc, tcmalloc).
ALLOCATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
MMAP_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def configure_allocator() -> bool:
    """Let glibc's malloc keep freed blocks up to 256 MiB in its heap for reuse instead of returning them to the
    system, unless the user chose an allocator or its settings. Returns whether it applied.

    A training step allocates and frees the same large buffers (activations, logits, gradients) every step. glibc
    serves large blocks with `mmap` and gives freed heap tops back (trim), so each step touched fresh pages:
    56,000-72,000 minor page faults per `alta-base` step, about 2,000 with this setting, and the step 2-11 % faster
    (RESULTS.md §12). The cost: the process keeps its peak heap. Works at any time (unlike the OpenMP settings);
    glibc only.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in ALLOCATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


def configure_openmp() -> bool:
    """Set the package's OpenMP defaults in this process's environment, if torch is not loaded yet (afterwards they
    would have no effect: libgomp has read them), and the allocator setting (`configure_allocator`). Child processes
    inherit the environment. Returns whether the OpenMP defaults apply."""
    configure_allocator()
    if "torch" in sys.modules:
        return False
    os.environ.update(openmp_environment())
    return True


def alta_embed() -> None:
    """`alta-embed` with the package's OpenMP defaults."""
    configure_openmp()
    from inference.embed_archive import cli

    cli()


def alta_evaluate() -> int:
    """`alta-evaluate` with the package's OpenMP defaults."""
    configure_openmp()
    from evaluation.cli import main

    return main()


__all__ = [
    "DEFAULTS",
    "USER_SETTINGS",
    "alta_embed",
    "alta_evaluate",
    "configure_allocator",
    "configure_openmp",
    "openmp_environment",
]
