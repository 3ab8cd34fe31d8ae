"""Helpers shared by the benchmark scripts: the machine, timing, peak memory, markdown tables.

Timing is wall clock, best of several rounds: on a shared machine the fastest round is the one least disturbed by
other processes, and peers are timed in alternating rounds of the same run so that a ratio compares like with like.
Peak memory on CPU is the rise of the process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`
on Linux) over the resident set before the call; on CUDA it is `max_memory_allocated` over the allocation before it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402


MIB = 2**20


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: torch.device) -> list[str]:
    """What ran the benchmark, as markdown bullet lines."""
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- date: {datetime.date.today().isoformat()}",
        f"- cpu: {cpu_model()}, {cores} cores available, torch threads {torch.get_num_threads()}, "
        f"timer {'process CPU time' if _clock is time.process_time else 'wall clock'}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
    ]
    from inference.precision import cpu_description, has_native

    lines.append(f"- cpu flags: {cpu_description().split('; flags: ', 1)[1]} (native bf16: {has_native('bf16')})")
    if hasattr(os, "getloadavg"):
        lines.append("- load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    if device.type == "cuda":
        lines.append(f"- device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        lines.append("- device: cpu")
    return lines


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """`fp32`: no autocast; `bf16`: `torch.autocast` to bfloat16 on the device (CPU autocast on CPU)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown dtype {dtype!r}; choose fp32 or bf16")


# `wall` (default): elapsed time. `process`: CPU time of the whole process, which does not count the time spent
# waiting for a core while other programs run, so on a shared machine it gives steadier ratios; use it with
# `--threads 1` (with more threads it would add up the threads' times, spin-waits included). CPU only.
_CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
_clock = time.perf_counter


def now() -> float:
    """The benchmark clock (`--timer`)."""
    return _clock()


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = _clock()
    fn()
    synchronize(device)
    return _clock() - start


def interleaved_times(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, after `warmup` untimed rounds.

    The functions run in alternating rounds (the order reversed every other round), so round `r` of two functions
    saw about the same machine load: ratios should be taken round by round (`paired_median`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(max(1, rounds)):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            times[name].append(time_call(fn, device))
    return times


def interleaved_best(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Best (lowest) seconds per call of each function over alternating rounds (see `interleaved_times`)."""
    return {name: min(ts) for name, ts in interleaved_times(fns, device, rounds, warmup).items()}


def paired_median(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of `numerator[r] / denominator[r]`."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


# -- peak memory ---------------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _trim_heap() -> None:
    # Give freed heap memory back to the system first, or memory kept by malloc after earlier calls would hide
    # this call's peak (glibc only; elsewhere a no-op).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict filled on exit with `peak_mib`: the memory the block added at its peak (see module docstring).

    Where the resident-set peak cannot be reset (not Linux), falls back to `ru_maxrss`, the process's lifetime peak,
    and says so under `note`.
    """
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / MIB
        return
    _trim_heap()
    before = _rss_bytes()
    if before is not None and _reset_hwm():
        yield result
        peak = _hwm_bytes()
        result["peak_mib"] = (max(peak, before) - before) / MIB if peak is not None else float("nan")
        return
    yield result
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["note"] = "process lifetime peak RSS"


def measure_peak(fn: Callable[[], object], device: torch.device) -> float:
    with peak_memory(device) as mem:
        fn()
    return mem["peak_mib"]


# -- the machine's matmul rate ---------------------------------------------------------------------------------------


def matmul_rate(device: torch.device, size: int, dtype: torch.dtype, rounds: int) -> float:
    """Best measured FLOP/s of a dense `size x size @ size x size` GEMM (2 size^3 FLOPs)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    seconds = interleaved_best({"gemm": lambda: a @ b}, device, rounds)["gemm"]
    return 2 * size**3 / seconds


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as `torch.utils.flop_counter` counts them (matmuls, convolutions, attention; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# -- output ----------------------------------------------------------------------------------------------------------


def run_json_worker(code: str, env: dict[str, str], cwd: Path, what: str) -> dict:
    """Run `code` with `python -c` in a fresh process (its own OpenMP and malloc settings, from `env`) and return the
    JSON object its last line of output holds; a failing worker raises naming `what`, with its stderr's tail."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: the run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        if isinstance(x, float):
            if x != x:  # nan
                return "n/a"
            return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def add_common_arguments(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one round, for CI smoke runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timer",
        choices=sorted(_CLOCKS),
        default="wall",
        help="wall clock, or process CPU time (steadier on a shared CPU; use with --threads 1)",
    )


def setup(args) -> torch.device:
    global _clock
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    if args.timer == "process" and device.type != "cpu":
        raise ValueError("--timer process measures CPU time; it is meaningless for a GPU run")
    _clock = _CLOCKS[args.timer]
    return device


def base_config(quick: bool):
    """The `alta-base` preset (the released sizes), or `alta-tiny` for `--quick`."""
    from configuration import load_preset

    return load_preset("alta-tiny" if quick else "alta-base")
