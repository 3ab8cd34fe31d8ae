"""`benchmarks/bench_reference.py`: its pure helpers, and the package's worker driven over its real protocol.

The reference's worker needs a checkout of the reference code and its own environment, which CI does not have; the
package's side runs here at the tiny preset, so that a change of the package's API breaks this test rather than the
next benchmark run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reference", BENCHMARKS / "bench_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_summary_is_per_round(bench) -> None:
    summary = bench.ratio_summary([2.0, 3.0, 8.0], [4.0, 3.0, 2.0])
    assert summary == {"median": 1.0, "min": 0.5, "max": 4.0, "rounds": 3}
    with pytest.raises(ValueError, match="same number of rounds"):
        bench.ratio_summary([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="same number of rounds"):
        bench.ratio_summary([], [])


def test_realistic_lengths_average_100_of_128(bench) -> None:
    lengths = bench.realistic_report_lengths(4, 128, 72)
    assert lengths == [72, 91, 109, 128]
    assert sum(lengths) / 4 == 100
    assert bench.realistic_report_lengths(1, 128, 72) == [128]
    assert _tiny_spec(bench, "grouped", batch_size=4)["report_lengths"] == [99, 100, 100, 101]
    assert _tiny_spec(bench, "full", batch_size=2)["report_lengths"] == [128, 128]


def test_zero_shot_extrapolation(bench) -> None:
    # The reference re-encodes the prompts for each of the 63 batches of 16 that 1,000 images make.
    assert bench.extrapolate_reference(2.0, [10.0, 12.0], 1000, 16) == pytest.approx(2.0 + 63 * 11.0)
    # The package encodes them once; images scale with their count.
    assert bench.extrapolate_package(30.0, [1.0, 1.0], 32, 1000) == pytest.approx(30.0 + 2.0 * 1000 / 32)


def test_cpu_description(bench) -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f amx_tile\n"
    model, flags = bench.cpu_description(cpuinfo)
    assert model == "Some CPU 9000"
    assert flags == {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": False}


def test_reference_dir_check_names_what_is_missing(bench, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        bench.check_reference_dir(tmp_path / "nowhere")
    (tmp_path / "model.py").write_text("")
    with pytest.raises(FileNotFoundError, match=r"lacks cxrbert\.py, .*util/trainable_params\.py"):
        bench.check_reference_dir(tmp_path)


def test_benchmark_vocabulary(bench) -> None:
    vocab = bench.benchmark_vocabulary(["[PAD]", "a", "b"], ["b", "lung", "lung", "base"], 8)
    assert vocab == ["[PAD]", "a", "b", "lung", "base", "[unused0]", "[unused1]", "[unused2]"]
    with pytest.raises(ValueError, match="needs 5 entries"):
        bench.benchmark_vocabulary(["[PAD]", "a", "b"], ["lung", "base"], 4)


def test_inputs_are_identical_across_calls_and_follow_the_masking_rule(bench) -> None:
    import _reference_workers as workers

    spec = _tiny_spec(bench)
    first, second = workers.make_inputs(spec), workers.make_inputs(spec)
    assert workers.checksums(first) == workers.checksums(second)
    lengths = spec["report_lengths"]
    assert first["attention_mask"].sum(1).tolist() == lengths
    labels, inputs, ids = first["mlm_labels"], first["mlm_inputs"], first["ids"]
    masked = labels != -100
    assert masked.any()
    assert (inputs[masked] == spec["mask_id"]).all() and (labels[masked] == ids[masked]).all()
    assert (inputs[~masked] == ids[~masked]).all()
    for row, n in enumerate(lengths):  # never [CLS], [SEP] or padding
        assert not masked[row, 0] and not masked[row, n - 1 :].any()


def _tiny_spec(bench, report_lengths: str = "realistic", batch_size: int = 2) -> dict:
    from configuration import load_preset

    args = Namespace(seed=0, threads=1, batch_size=batch_size, report_lengths=report_lengths)
    ids = {"cls_id": 2, "sep_id": 3, "mask_id": 4, "pad_id": 0, "unk_id": 1}
    spec = bench.make_spec(args, load_preset("alta-tiny"), ids, preset="alta-tiny")
    spec.update(image_batches=[2, 1], text_batch=2, zeroshot_batch=2)
    return spec


def test_package_worker_answers_every_command(bench, parity_dir: Path, tmp_path: Path) -> None:
    import _reference_workers as workers

    (tmp_path / workers.TEXT_FOLDER).symlink_to(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    spec = _tiny_spec(bench, "grouped")  # the package's text tensors end at the longest report (101 of 128)
    command = [sys.executable, str(BENCHMARKS / "_reference_workers.py"), "--side", "package"]
    command += ["--workspace", str(tmp_path), "--spec", json.dumps(spec)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCHMARKS.parent)}
    worker = bench.Worker("package", command, tmp_path / "package.log", {**os.environ, **env})
    try:
        assert worker.info["parameters"]["trainable"] < worker.info["parameters"]["total"]
        assert sum(len(v) for v in worker.info["prompts"].values()) == 489
        assert worker.info["checksums"] == workers.checksums(workers.make_inputs(spec))
        step = worker.call("train")
        assert step["seconds"] > 0 and step["cpu_seconds"] > 0 and step["voluntary_switches"] >= 0
        assert step["loss"] == step["loss"]  # finite, not NaN
        flops = worker.call("flops")["flops"]
        assert flops > 0
        assert worker.call("matmul")["matmul_flops_per_second"] > 1e6
        worker.call("image", batch=2)
        worker.call("text")
        prompts = worker.call("prompts")
        assert 3 < prompts["prompt_tokens_mean"] < 30
        zeroshot = worker.call("zeroshot", images=3, batch=2)
        assert len(zeroshot["batch_seconds"]) == 2 and zeroshot["once_seconds"] > 0
        with pytest.raises(SystemExit, match="unknown command"):
            worker.call("nonsense")
    finally:
        worker.close()
