"""bf16/fp16 only where the CPU computes them natively: detection, the fp32 fallback, forcing, training's accelerator."""

from __future__ import annotations

import logging

import pytest

from inference import precision


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch):
    def set_flags(*names: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(names))

    return set_flags


def test_detection_reads_the_flags(flags) -> None:
    flags("avx2", "fma")
    assert not precision.has_native("bf16") and not precision.has_native("fp16")
    flags("avx2", "avx512f", "avx512_bf16")
    assert precision.has_native("bf16")
    flags("amx_tile", "amx_bf16")
    assert precision.has_native("bf16")
    flags("asimd", "bf16")  # Arm's "Features"
    assert precision.has_native("bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        precision.has_native("int8")


def test_without_native_bf16_it_warns_and_runs_fp32(flags, caplog: pytest.LogCaptureFixture) -> None:
    flags("avx2", "fma")
    with caplog.at_level(logging.WARNING, logger="alta.precision"):
        assert precision.cpu_precision("bf16") == "no"
    assert "running fp32 instead" in caplog.text and "--force_cpu_mixed_precision" in caplog.text
    assert "avx512_bf16" in caplog.text and "avx2" in caplog.text  # what is missing, and what the CPU has
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alta.precision"):
        assert precision.cpu_precision("bf16", force=True) == "bf16"
    assert "forced" in caplog.text
    assert precision.cpu_precision("no") == "no"


def test_with_native_bf16_it_runs_bf16_silently(flags, caplog: pytest.LogCaptureFixture) -> None:
    flags("avx512f", "avx512_bf16", "amx_bf16")
    with caplog.at_level(logging.WARNING, logger="alta.precision"):
        assert precision.cpu_precision("bf16") == "bf16"
    assert caplog.text == ""
    assert "amx_bf16" in precision.cpu_description()


def test_this_machine_is_described() -> None:
    assert "flags:" in precision.cpu_description()


@pytest.mark.parametrize("native", [False, True])
def test_training_accelerator_follows_the_cpu(flags, native: bool) -> None:
    from accelerate.state import AcceleratorState, GradientState

    from training.align import parse_args
    from training.build import build_accelerator

    flags(*(("avx512_bf16",) if native else ("avx2",)))
    _, _, args = parse_args(["--preset", "alta-tiny", "--cpu", "--mixed_precision", "bf16", "--report_to", "none"])
    for forced in (False, True):
        args.force_cpu_mixed_precision = forced
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        try:
            accelerator = build_accelerator(args)
            assert accelerator.mixed_precision == ("bf16" if native or forced else "no")
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
