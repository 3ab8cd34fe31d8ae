"""Reduced precision on the CPU only where the CPU computes it natively.

On a CPU without native bfloat16 arithmetic (x86 without AVX512_BF16 or AMX-BF16, Arm without BF16), PyTorch emulates
bf16 matrix products by converting to fp32 and back: autocast then makes ALTA 5 to 50 times slower than fp32
(benchmarks/RESULTS.md, issue 14). Training (`--mixed_precision`) and embedding (`alta-embed --bf16`) ask
`cpu_precision` what to run: on such a CPU they warn and run fp32, unless forced.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import sys
from pathlib import Path


logger = logging.getLogger("alta.precision")

# /proc/cpuinfo flags that mean native arithmetic in the dtype (x86 "flags", Arm "Features").
NATIVE_FLAGS = {
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),
    "fp16": ("avx512_fp16", "amx_fp16", "fphp", "asimdhp"),
}
# The flags benchmark tables record.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (`/proc/cpuinfo` on Linux, `sysctl` on macOS); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            return frozenset({"bf16"} if out == "1" else set())
        except (OSError, subprocess.SubprocessError):
            pass
    return frozenset()


def has_native(dtype: str) -> bool:
    """Whether the CPU computes `dtype` (`"bf16"` or `"fp16"`) natively (see `NATIVE_FLAGS`)."""
    if dtype not in NATIVE_FLAGS:
        raise ValueError(f"dtype must be one of {sorted(NATIVE_FLAGS)}; got {dtype!r}")
    return bool(cpu_flags() & set(NATIVE_FLAGS[dtype]))


def cpu_description() -> str:
    """CPU model and the flags that matter here (for benchmark tables and messages)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = sorted(cpu_flags() & set(REPORTED_FLAGS))
    return f"{model}; flags: {', '.join(flags) if flags else 'none of ' + ', '.join(REPORTED_FLAGS)}"


def cpu_precision(requested: str, force: bool = False, force_flag: str = "--force_cpu_mixed_precision") -> str:
    """The precision to run on the CPU for a requested one (`"no"`/`"fp32"`, `"bf16"` or `"fp16"`).

    A reduced precision the CPU lacks natively is replaced by `"no"` with a warning naming `force_flag` (emulated,
    it is several times slower than fp32); `force=True` keeps it.
    """
    if requested in ("no", "fp32", None) or has_native(requested):
        return requested
    wanted = ", ".join(NATIVE_FLAGS[requested])
    if force:
        logger.warning("%s requested on a CPU without native %s support (%s): forced, expect it to be slow", requested,
                       requested, cpu_description())  # fmt: skip
        return requested
    logger.warning(
        "%s on this CPU would be emulated and several times slower than fp32 (%s; native support needs one of: %s): "
        "running fp32 instead. Pass %s to use %s anyway.",
        requested,
        cpu_description(),
        wanted,
        force_flag,
        requested,
    )
    return "no"


__all__ = ["NATIVE_FLAGS", "cpu_description", "cpu_flags", "cpu_precision", "has_native"]
