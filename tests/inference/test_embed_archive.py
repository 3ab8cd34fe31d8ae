"""`alta-embed`: every source kind, 1 process against 2 real processes (accelerate launch), SIGKILL and resume, bad
inputs skipped and listed, a different command refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.embed_archive import main as embed_main
from inference.embedding import embed_images, load_model_and_processor
from inference.store import EmbeddingStore

from ..model_folders import converted_tiny_model
from ..processing.dicom_factory import write_test_archive


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny_model(parity_dir, tmp_path_factory.mktemp("converted"))


@pytest.fixture(scope="module")
def model_and_processor(model_dir: Path):
    return load_model_and_processor(model_dir)


def write_pngs(folder: Path, count: int, size: int = 64, broken: int = 1) -> list[Path]:
    """`count` noise radiographs in two subfolders, plus `broken` files that only look like PNGs."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"sub{i % 2}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size + 8), dtype=np.uint8), "L").save(path)
        paths.append(path)
    for i in range(broken):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return paths


def _args(model_dir: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--input", str(source), "--output", str(output), "--no-progress", *extra]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _summary(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("alta-embed summary: "))
    return json.loads(line.split(": ", 1)[1])


def test_image_folder_csv_and_dataset_equal_direct_embedding(model_dir, model_and_processor, tmp_path):
    model, processor = model_and_processor
    paths = write_pngs(tmp_path / "images", 5)
    summary = embed_main(_args(model_dir, tmp_path / "images", tmp_path / "s1", "--batch-size", "2",
                               "--shard-size", "2", "--num-workers", "0"))  # fmt: skip
    store = EmbeddingStore(tmp_path / "s1")
    order = sorted(paths)
    assert store.ids == [p.relative_to(tmp_path / "images").as_posix() for p in order]
    torch.testing.assert_close(store.load(), embed_images(model, processor, order), atol=1e-5, rtol=0)
    assert summary["skipped_inputs"] == 1 and summary["parts"] == 3  # broken0.png: listed, not embedded
    skipped = json.loads((tmp_path / "s1" / "skipped.json").read_text())["inputs"]
    assert [s["id"] for s in skipped] == ["broken0.png"] and "not a recognised image file" in skipped[0]["reason"]

    # A reference-format CSV of studies (relative paths, "-1" for missing views).
    rows = [("s-a", order[0], order[1], "-1", "-1"), ("s-b", order[2], "-1", order[3], order[4])]
    lines = ["study_id,image_path,auxview_image_path,last_image_path,last_auxview_image_path,report"]
    lines += [",".join([sid, *(str(Path(p).relative_to(tmp_path)) if p != "-1" else p for p in views), "r"])
              for sid, *views in rows]  # fmt: skip
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    embed_main(_args(model_dir, tmp_path / "train.csv", tmp_path / "s2", "--num-workers", "0"))
    studies = [{"frontal": order[0], "lateral": order[1]},
               {"frontal": order[2], "prior_frontal": order[3], "prior_lateral": order[4]}]  # fmt: skip
    store = EmbeddingStore(tmp_path / "s2")
    assert store.ids == ["s-a", "s-b"]
    torch.testing.assert_close(store.load(), embed_images(model, processor, studies), atol=1e-5, rtol=0)

    # A `datasets` dataset of images (save_to_disk folder), ids from its "id" column.
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    dataset = Dataset.from_dict({"id": ["x", "y"], "image": [str(order[0]), str(order[1])]},
                                features=Features({"id": Value("string"), "image": ImageFeature()}))  # fmt: skip
    dataset.save_to_disk(str(tmp_path / "ds"))
    embed_main(_args(model_dir, tmp_path / "ds", tmp_path / "s3", "--num-workers", "0", "--unit", "image"))
    store = EmbeddingStore(tmp_path / "s3")
    assert store.ids == ["x", "y"]
    torch.testing.assert_close(store.load(), embed_images(model, processor, order[:2]), atol=1e-5, rtol=0)

    # bf16 autocast: the same ranking, close values.
    embed_main(_args(model_dir, tmp_path / "images", tmp_path / "s4", "--num-workers", "0", "--bf16"))
    bf16 = EmbeddingStore(tmp_path / "s4").load()
    assert (bf16 * EmbeddingStore(tmp_path / "s1").load()).sum(-1).min() > 0.99


def test_refuses_another_command_on_a_run_folder_and_fails_fast_on_unreadable_input(model_dir, tmp_path):
    write_pngs(tmp_path / "images", 3)
    embed_main(_args(model_dir, tmp_path / "images", tmp_path / "out", "--num-workers", "0"))
    with pytest.raises(ValueError, match=r"other inputs, weights or settings \(differs in: \['shard_size'\]\)"):
        embed_main(_args(model_dir, tmp_path / "images", tmp_path / "out", "--shard-size", "2"))
    summary = embed_main(_args(model_dir, tmp_path / "images", tmp_path / "out", "--shard-size", "2", "--overwrite",
                               "--num-workers", "0"))  # fmt: skip
    assert summary["parts"] == 2 and sorted(p.name for p in (tmp_path / "out").glob("part-*")) == [
        "part-000000.safetensors",
        "part-000001.safetensors",
    ]
    bad = tmp_path / "bad"
    write_pngs(bad, 0, broken=3)
    with pytest.raises(RuntimeError, match="the first 3 inputs all failed"):
        embed_main(_args(model_dir, bad, tmp_path / "bad-out", "--num-workers", "0"))
    assert not (tmp_path / "bad-out" / "index.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable input"):
        embed_main(_args(model_dir, tmp_path / "empty", tmp_path / "o", "--source", "images"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        embed_main(_args(model_dir, tmp_path / "missing", tmp_path / "o", "--source", "dicom"))


def test_two_processes_give_the_one_process_store(model_dir, tmp_path):
    """DICOM studies (priors, a broken pixel stream, unusable files) on 1 process and on 2 real processes."""
    pytest.importorskip("pydicom")
    write_test_archive(tmp_path / "archive")
    one = embed_main(_args(model_dir, tmp_path / "archive", tmp_path / "one", "--batch-size", "2",
                           "--shard-size", "2", "--num-workers", "0"))  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "inference.embed_archive",
               *_args(model_dir, tmp_path / "archive", tmp_path / "two", "--batch-size", "2", "--shard-size", "2",
                      "--num-workers", "1", "--cpu")]  # fmt: skip
    done = subprocess.run(command, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = _summary(done.stdout)
    assert two["processes"] == 2 and two["parts_written"] == one["parts_written"] == 4
    a, b = EmbeddingStore(tmp_path / "one"), EmbeddingStore(tmp_path / "two")
    assert a.ids == b.ids and len(set(b.ids)) == len(b.ids) == 6  # each id exactly once
    torch.testing.assert_close(a.load(), b.load(), atol=1e-6, rtol=0)
    skipped = json.loads((tmp_path / "two" / "skipped.json").read_text())
    assert [s["id"] for s in skipped["inputs"]] == ["4.1"]  # the frontal whose pixel data is cut off
    assert len(skipped["archive"]) == 6  # 4 unusable files, 1 study without frontal, 1 image of unknown view
    # Both processes wrote parts (k % 2), and each part is a valid store shard listed once.
    assert [s["file"] for s in b.shards] == [f"part-{k:06d}.safetensors" for k in range(4)]


def test_sigkill_mid_run_then_the_same_command_completes_without_redoing_parts(
    model_dir, model_and_processor, tmp_path
):
    paths = sorted(write_pngs(tmp_path / "images", 40, size=256, broken=0))
    args = _args(model_dir, tmp_path / "images", tmp_path / "out", "--batch-size", "2", "--shard-size", "2",
                 "--num-workers", "0")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "inference.embed_archive", *args], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list((tmp_path / "out").glob("part-*.safetensors"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out").glob("part-*.safetensors")}
    assert 2 <= len(finished) < 20 and not (tmp_path / "out" / "index.json").exists()  # killed mid-run, unpublished

    summary = embed_main(args)
    assert summary["parts_reused"] == len(finished) and summary["parts_written"] == 20 - len(finished)
    assert summary["embedded_this_run"] == 40 - 2 * len(finished)
    assert summary["forward_calls"] == 20 - len(finished)  # one batch of 2 per remaining part: nothing recomputed
    for name, stamp in finished.items():  # the finished parts were not rewritten
        path = tmp_path / "out" / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    store = EmbeddingStore(tmp_path / "out")
    assert store.ids == [p.relative_to(tmp_path / "images").as_posix() for p in paths]  # each exactly once, in order
    model, processor = model_and_processor
    torch.testing.assert_close(store.load(), embed_images(model, processor, paths, batch_size=8), atol=1e-5, rtol=0)
