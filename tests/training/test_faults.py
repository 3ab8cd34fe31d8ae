"""Faults in `training/align.py` runs, each reproduced for real: unreadable data, damaged and poisoned checkpoints, a
full disk, resumes that would not be exact, signals (SIGINT, SIGTERM, twice, during the export, SIGKILL of the
launcher), skipped studies counted over processes and resumes, and a loopback-only two-process launch."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

import processing.atomic as atomic
from processing.atomic import atomic_write_text, staged_directory
from training.align import NonFiniteLossError, NoReadableDataError, main
from training.arguments import AlignArguments
from training.build import build_optimizer
from training.checkpoints import CheckpointError, resolve_checkpoint, verify_checkpoint
from training.data import GlobalBatchSampler
from training.notices import StudyNotices

from .processes import LiveProcess, accelerate_command, align_command, local_launch_command
from .synthetic import write_dataset, write_studies
from .test_align import _argv


def _steps(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "checkpoints").iterdir())


def _state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("studies"), n=12)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory: pytest.TempPathFactory, parity_dir: Path, dataset: Path) -> Path:
    """A 3-step run with a checkpoint after every step (step-1, step-2, step-3)."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    main(_argv(parity_dir, dataset, out, "--max_steps", "3", "--checkpointing_steps", "1",
               "--checkpoints_total_limit", "0"))  # fmt: skip
    assert _steps(out) == ["step-00000001", "step-00000002", "step-00000003"]
    return out


def _copy_run(checkpointed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(checkpointed / "checkpoints", out / "checkpoints")
    return out


def _simulate_skips(n: int, batch: int, world: int, corrupt: set[int], steps: int, seed: int = 0) -> int:
    """Studies left out of batches until `steps` optimizer steps were taken, under align.py's rule: a batch in
    which some process has no readable study is skipped by every process."""
    skipped = taken = 0
    for epoch in range(100):
        samplers = [GlobalBatchSampler(n, batch, world, r, seed) for r in range(world)]
        for s in samplers:
            s.set_epoch(epoch)
        for parts in zip(*samplers):
            skipped += sum(i in corrupt for part in parts for i in part)
            if all(any(i not in corrupt for i in part) for part in parts):
                taken += 1
                if taken == steps:
                    return skipped
    raise AssertionError("never reached the step")


# ---------------------------------------------------------------------------------------------------------------
# 1. No readable data
# ---------------------------------------------------------------------------------------------------------------


def test_a_wrong_image_root_fails_fast_naming_the_root_and_a_path(tmp_path, parity_dir, caplog):
    from processing.studies import write_reference_csv

    rows = write_studies(tmp_path / "images", n=12)
    csv_path = write_reference_csv(rows, tmp_path / "train.csv", relative_to=tmp_path)
    wrong = tmp_path / "not-the-root"
    argv = _argv(parity_dir, tmp_path, tmp_path / "run", "--max_steps", "50", "--per_device_train_batch_size", "2",
                 "--max_consecutive_skipped_batches", "4")  # fmt: skip
    i = argv.index("--dataset_path")
    argv[i : i + 2] = ["--train_csv", str(csv_path), "--image_root", str(wrong)]
    caplog.set_level(logging.WARNING)
    with pytest.raises(NoReadableDataError) as info:
        main(argv)
    message = str(info.value)
    assert f"--image_root {str(wrong)!r}" in message
    assert "4 batches in a row (8 studies)" in message
    assert f"'{wrong}/images/" in message and "image file not found" in message  # an example path under the root
    skip_lines = [r for r in caplog.records if r.getMessage().startswith("skipping unreadable study")]
    assert len(skip_lines) <= 9  # 8 studies named once each, plus at most one "further studies" line


def test_an_epoch_without_a_readable_study_stops(tmp_path, parity_dir):
    data = write_dataset(tmp_path / "bad", n=8, corrupt=tuple(range(8)))
    with pytest.raises(NoReadableDataError, match=r"No readable study in epoch 0: 2 batches in a row \(8 studies\)"):
        main(_argv(parity_dir, data, tmp_path / "run", "--max_steps", "5"))


def test_notices_name_each_study_once_and_are_rate_limited(caplog):
    logger = logging.getLogger("test.notices")
    caplog.set_level(logging.WARNING, logger="test.notices")
    notices = StudyNotices("skipping unreadable study", logger, first=10, interval=3600)
    for _ in range(3):  # the same 1000 studies, drawn again every epoch
        notices.record([f"study index {i}: frontal: '/x/{i}.png': missing" for i in range(1000)])
    assert len(caplog.records) == 11  # ten named, one "further studies are counted" line
    summary = notices.summary()
    assert summary.startswith("skipping unreadable study: 1000 studies on this process, 3000 times")
    assert "study index 0: frontal: '/x/0.png'" in summary
    assert "990 more studies" in caplog.records[-1].getMessage()  # the forced flush of the summary


# ---------------------------------------------------------------------------------------------------------------
# 2. Damaged checkpoints, a full disk
# ---------------------------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / "trainer_state.json"
    target.write_text('{"global_step": 4}')
    real = atomic._write_all

    def disk_full(fd: int, data: bytes) -> None:
        real(fd, data[:10])  # part of it reached the disk, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", disk_full)
    with pytest.raises(OSError, match=rf"could not write {target}: No space left on device"):
        atomic_write_text(target, '{"global_step": 6, "losses": []}')
    assert target.read_text() == '{"global_step": 4}'
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.json"]  # the temp file is gone


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_usable(tmp_path, parity_dir, dataset, monkeypatch):
    out = tmp_path / "run"
    real, calls = atomic._write_all, []

    def fills_at_the_third_marker(fd: int, data: bytes) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(atomic, "_write_all", fills_at_the_third_marker)
    with pytest.raises(CheckpointError) as info:
        main(_argv(parity_dir, dataset, out, "--max_steps", "4", "--checkpointing_steps", "1"))
    assert str(info.value).startswith(f"could not write checkpoint {out / 'checkpoints' / 'step-00000003'}")
    assert "No space left on device" in str(info.value)
    assert str(info.value).endswith(f"the newest complete checkpoint is {out / 'checkpoints' / 'step-00000002'}")
    assert _steps(out) == ["step-00000001", "step-00000002"]  # the partial folder was removed
    monkeypatch.setattr(atomic, "_write_all", real)  # space freed: the run resumes from step 2
    result = main(_argv(parity_dir, dataset, out, "--max_steps", "4", "--checkpointing_steps", "1",
                        "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert result["global_step"] == 4 and len(_state(out / "checkpoints" / "step-00000004")["losses"]) == 4


def test_latest_skips_damaged_checkpoints_and_says_why(checkpointed, tmp_path, caplog):
    out = _copy_run(checkpointed, tmp_path)
    (out / "checkpoints" / "step-00000003" / "trainer_state.json").write_bytes(b"")  # the 0-byte marker
    weights = out / "checkpoints" / "step-00000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the tensor data
    weights.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    chosen = resolve_checkpoint("latest", AlignArguments(output_dir=str(out)))
    assert chosen.name == "step-00000001"
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping checkpoint" in m and "trainer_state.json is not valid JSON (0 bytes)" in m for m in messages)
    assert any(f"{weights} is damaged (its sha256 differs" in m for m in messages)


def test_an_explicit_checkpoint_that_does_not_verify_is_refused_naming_the_file(checkpointed, tmp_path):
    out = _copy_run(checkpointed, tmp_path)
    args = AlignArguments(output_dir=str(out))
    step2 = out / "checkpoints" / "step-00000002"
    (step2 / "optimizer.bin").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=rf"{step2 / 'optimizer.bin'} has 9 bytes"):
        resolve_checkpoint(str(step2), args)
    # a checkpoint written before manifests existed: corrupt weights are still named, not a bare SafetensorError
    step1 = out / "checkpoints" / "step-00000001"
    state = _state(step1)
    del state["checkpoint"]
    (step1 / "trainer_state.json").write_text(json.dumps(state))
    (step1 / "model.safetensors").write_bytes((step1 / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{step1 / 'model.safetensors'} cannot be read: SafetensorError"):
        resolve_checkpoint(str(step1), args)
    with pytest.raises(CheckpointError, match=r"step-00000009 is not a folder"):
        resolve_checkpoint(str(out / "checkpoints" / "step-00000009"), args)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the planted payload's protocol
def test_missing_or_tampered_random_states_refuse_an_inexact_resume(checkpointed, tmp_path):
    out = _copy_run(checkpointed, tmp_path)
    args = AlignArguments(output_dir=str(out))
    step3 = out / "checkpoints" / "step-00000003"
    (step3 / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(str(step3), args)
    assert f"{step3 / 'random_states_0.pkl'} is missing" in str(info.value)
    assert "Pass --allow_inexact_resume" in str(info.value)
    assert resolve_checkpoint("latest", args).name == "step-00000002"  # an older checkpoint resumes exactly
    accepting = AlignArguments(output_dir=str(out), allow_inexact_resume=True)
    assert resolve_checkpoint(str(step3), accepting) == step3

    # A pickle payload in place of the random states (in a checkpoint without a manifest): refused, never run.
    step2 = out / "checkpoints" / "step-00000002"
    state = _state(step2)
    del state["checkpoint"]
    (step2 / "trainer_state.json").write_text(json.dumps(state))
    witness = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    (step2 / "random_states_0.pkl").write_bytes(pickle.dumps(Payload()))
    problems = verify_checkpoint(step2)
    assert [p.kind for p in problems] == ["rng"]
    assert f"{step2 / 'random_states_0.pkl'} cannot be read: UnpicklingError" in problems[0].message
    assert not witness.exists()


def test_a_resume_with_other_settings_is_refused_unless_allowed(checkpointed, tmp_path, parity_dir, dataset):
    out = _copy_run(checkpointed, tmp_path)
    resume = ["--max_steps", "4", "--resume_from_checkpoint", "latest"]
    argv = _argv(parity_dir, dataset, out, *resume)
    argv[argv.index("--per_device_train_batch_size") + 1] = "2"
    with pytest.raises(CheckpointError) as info:
        main(argv)
    assert "--per_device_train_batch_size: checkpoint 4, now 2" in str(info.value)
    assert "pass --allow_inexact_resume" in str(info.value)
    with pytest.raises(CheckpointError, match=r"the training data .*checkpoint \{'studies': 12"):
        main(_argv(parity_dir, dataset, out, *resume, "--max_train_samples", "8"))
    with pytest.raises(CheckpointError, match=r"--optim: checkpoint 'adamw_torch_fused', now 'adamw_torch'"):
        main(_argv(parity_dir, dataset, out, *resume, "--optim", "adamw_torch"))
    result = main([*argv, "--allow_inexact_resume"])
    assert result["global_step"] == 4


def test_a_checkpoint_from_before_optim_was_recorded_resumes_only_with_the_for_loop_adamw(
    checkpointed, tmp_path, parity_dir, dataset
):
    out = _copy_run(checkpointed, tmp_path)
    step3 = out / "checkpoints" / "step-00000003"
    state = _state(step3)
    del state["checkpoint"]  # written before manifests (and before `optim` was recorded)
    del state["settings"]["optim"]
    (step3 / "trainer_state.json").write_text(json.dumps(state))
    resume = ["--max_steps", "4", "--resume_from_checkpoint", str(step3)]
    with pytest.raises(CheckpointError, match=r"--optim: checkpoint 'adamw_torch', now 'adamw_torch_fused'"):
        main(_argv(parity_dir, dataset, out, *resume))
    assert main(_argv(parity_dir, dataset, out, *resume, "--optim", "adamw_torch"))["global_step"] == 4


@pytest.mark.parametrize(("saved", "now", "fused"), [("adamw_torch", "adamw_torch_fused", True),
                                                     ("adamw_torch_fused", "adamw_torch", None)])  # fmt: skip
def test_a_loaded_optimizer_state_keeps_the_implementation_asked_for(saved, now, fused):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before, _ = build_optimizer(model, AlignArguments(output_dir="unused", optim=saved), world_size=1)
    model(torch.randn(2, 3)).sum().backward()
    before.step()
    after, _ = build_optimizer(model, AlignArguments(output_dir="unused", optim=now), world_size=1)
    after.load_state_dict(before.state_dict())  # torch alone would restore the saved groups' `fused`
    assert [g["fused"] for g in after.param_groups] == [fused, fused]
    assert after.state_dict()["state"].keys() == before.state_dict()["state"].keys()
    with pytest.raises(ValueError, match=r"--optim must be one of adamw_torch_fused, adamw_torch; got 'sgd'"):
        AlignArguments(output_dir="unused", optim="sgd")
    with pytest.raises(ValueError, match=r"no fused AdamW for the device 'meta' .* pass --optim adamw_torch"):
        build_optimizer(model, AlignArguments(output_dir="unused"), 1, device=torch.device("meta"))
    assert build_optimizer(model, AlignArguments(output_dir="unused", optim="adamw_torch"), 1, torch.device("meta"))


# ---------------------------------------------------------------------------------------------------------------
# 3. The NaN guard
# ---------------------------------------------------------------------------------------------------------------


def test_an_update_to_non_finite_parameters_stops_before_it_is_saved(tmp_path, parity_dir, dataset):
    out = tmp_path / "inf"
    with pytest.raises(NonFiniteLossError) as info:  # the decay factor 1 - lr * 1e39 overflows at step 2
        main(_argv(parity_dir, dataset, out, "--max_steps", "4", "--checkpointing_steps", "1",
                   "--learning_rate", "1", "--weight_decay", "1e39"))  # fmt: skip
    message = str(info.value)
    assert message.startswith("Stopped at step 2: the update made") and "parameter(s) non-finite" in message
    assert message.endswith(f"the last good checkpoint is {out / 'checkpoints' / 'step-00000001'}.")
    assert _steps(out) == ["step-00000001"]
    assert verify_checkpoint(out / "checkpoints" / "step-00000001") == []


# ---------------------------------------------------------------------------------------------------------------
# 4. Counts
# ---------------------------------------------------------------------------------------------------------------


def test_skipped_studies_are_counted_across_resumes(tmp_path, parity_dir):
    corrupt = {1, 5, 9}
    data = write_dataset(tmp_path / "bad", n=12, corrupt=tuple(corrupt))
    out = tmp_path / "run"
    main(_argv(parity_dir, data, out, "--max_steps", "4", "--checkpointing_steps", "4"))
    result = main(_argv(parity_dir, data, out, "--max_steps", "7", "--resume_from_checkpoint", "latest"))
    assert result["global_step"] == 7
    assert result["skipped_studies"] == _simulate_skips(12, 4, 1, corrupt, steps=7) > 3


def test_truncated_reports_are_named_once_per_study_and_summarised(tmp_path, parity_dir, dataset, caplog):
    caplog.set_level(logging.WARNING)
    argv = _argv(parity_dir, dataset, tmp_path / "run", "--max_steps", "6")  # two epochs of the 12 studies
    argv[argv.index("--max_length") + 1] = "8"  # every report is longer
    result = main(argv)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report truncated")]
    named = [m for m in lines if m.startswith("report truncated to --max_length tokens: study index")]
    assert len(named) == 10 and len({m.split(" (")[0] for m in named}) == 10  # the first ten, each once
    assert len(lines) <= 13  # plus the switch to counts, one count line and the summary
    assert any("12 studies on this process, 24 times" in m for m in lines)
    assert result["truncated_reports"] == 12


# ---------------------------------------------------------------------------------------------------------------
# 5. Signals
# ---------------------------------------------------------------------------------------------------------------


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, parity_dir, dataset):
    out = tmp_path / "term"
    run = LiveProcess(align_command(_argv(parity_dir, dataset, out, "--max_steps", "100000")))
    try:
        run.wait_for("training alta")
        run.wait_for("3/100000")
        run.signal(signal.SIGTERM)  # what a scheduler sends
        assert run.wait() == 143, run.output[-3000:]
    finally:
        run.kill()
    assert "received SIGTERM: stopping after the current step" in run.output
    saved = [p for p in (out / "checkpoints").iterdir() if not verify_checkpoint(p)]
    assert len(saved) == 1 and _state(saved[0])["global_step"] >= 3
    assert not (out / "model").exists()


def test_a_second_interrupt_forces_the_exit(tmp_path, parity_dir, dataset):
    out = tmp_path / "twice"
    run = LiveProcess(align_command(_argv(parity_dir, dataset, out, "--max_steps", "100000")))
    try:
        run.wait_for("3/100000")
        run.signal(signal.SIGINT)
        run.wait_for("[alta] received SIGINT: stopping")
        # Freeze it on its way out (finishing the step, saving), so the second Ctrl-C comes while it is still busy.
        run.signal(signal.SIGSTOP)
        time.sleep(1.5)  # past the window in which a repeat counts as the launcher's copy of the first
        run.signal(signal.SIGINT)
        run.signal(signal.SIGCONT)
        assert run.wait(timeout=60) == 130
    finally:
        run.kill()
    assert "[alta] received SIGINT again: exiting now without saving" in run.output


def test_a_signal_during_the_final_export_completes_the_run(tmp_path, parity_dir, dataset, monkeypatch, capfd):
    from transformers import AutoModel

    import training.export

    real = training.export.export_model

    def interrupted_export(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered while the export runs
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(training.export, "export_model", interrupted_export)
    result = main(_argv(parity_dir, dataset, tmp_path / "run", "--max_steps", "2"))
    assert result["interrupted"] is False and result["exit_code"] == 0
    assert "received SIGINT during the final export: the run has finished" in capfd.readouterr().err
    folder = Path(result["model_dir"])
    assert json.loads((folder / "train_results.json").read_text())["interrupted"] is False
    assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "AltaModel"


def test_a_kill_during_the_export_leaves_no_half_model_folder(tmp_path, parity_dir, dataset):
    out = tmp_path / "killed"
    run = LiveProcess(align_command(_argv(parity_dir, dataset, out, "--max_steps", "2")))
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(".model.staging-*/model/*")):
            assert run.proc.poll() is None, run.output[-3000:]
            assert time.monotonic() < deadline, run.output[-3000:]
            time.sleep(0.001)
        run.signal(signal.SIGKILL)  # mid-export: some files of the model are written
        run.wait()
    finally:
        run.kill()
    assert not (out / "model").exists()
    with staged_directory(out / "model") as staged:  # the next export clears the leftover staging folder
        (staged / "config.json").write_text("{}")
    assert [p.name for p in out.iterdir() if p.name.startswith(".model")] == []


def test_staged_directory_keeps_the_previous_folder_on_failure(tmp_path):
    final = tmp_path / "model"
    with staged_directory(final) as staged:
        (staged / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), staged_directory(final) as staged:
        (staged / "a.txt").write_text("half")
        raise RuntimeError("killed mid-export")
    assert (final / "a.txt").read_text() == "first"
    with staged_directory(final) as staged:
        (staged / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------------------------------------------------------
# 6. Two processes: launcher death; Ctrl-C, counts and step alignment, loopback
# ---------------------------------------------------------------------------------------------------------------


def _workers(launcher_pid: int, count: int, timeout: float = 240.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        workers = [
            p for p in psutil.Process(launcher_pid).children(recursive=True) if "align.py" in " ".join(p.cmdline())
        ]
        if len(workers) == count:
            return workers
        assert time.monotonic() < deadline, f"found {len(workers)} workers"
        time.sleep(0.1)


def test_workers_exit_when_the_launcher_is_killed(tmp_path, parity_dir, dataset):
    out = tmp_path / "orphans"
    argv = _argv(parity_dir, dataset, out, "--max_steps", "100000")
    argv[argv.index("--per_device_train_batch_size") + 1] = "2"
    run = LiveProcess(accelerate_command(argv))
    workers: list[psutil.Process] = []
    try:
        run.wait_for("training alta")
        workers = _workers(run.pid, 2)
        run.wait_for("3/100000")
        run.signal(signal.SIGKILL)  # the launcher dies; nothing supervises the workers any more
        _, alive = psutil.wait_procs(workers, timeout=90)
        assert not alive, f"workers {[p.pid for p in alive]} kept running after their launcher died"
    finally:
        run.kill()
        for worker in workers:
            if worker.is_running():
                worker.kill()
    run._reader.join(timeout=30)
    assert run.output.count("interrupted (SIGTERM) at step") == 2, run.output[-3000:]
    saved = [p for p in (out / "checkpoints").iterdir() if not verify_checkpoint(p)]
    assert len(saved) == 1 and len(_state(saved[0])["checkpoint"]["files"]) >= 4  # both ranks' random states


def test_two_processes_ctrl_c_count_skips_stay_in_step_and_listen_on_loopback_only(tmp_path, parity_dir):
    # Process 1's half of the first global batch is unreadable, and one study of process 0's half of the second.
    order = list(GlobalBatchSampler(12, 4, 1, 0, seed=0))
    corrupt = {*order[0][2:], order[1][0]}
    data = write_dataset(tmp_path / "bad", n=12, corrupt=tuple(corrupt))
    out = tmp_path / "two"
    argv = _argv(parity_dir, data, out, "--max_steps", "100000", "--logging_steps", "1000")
    argv[argv.index("--per_device_train_batch_size") + 1] = "2"
    run = LiveProcess(local_launch_command(argv))
    try:
        run.wait_for("training alta")
        run.wait_for("2/100000")
        pids = [run.pid] + [p.pid for p in psutil.Process(run.pid).children(recursive=True)]
        listening = [
            (pid, c.laddr)
            for pid in pids
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening
        run.wait_for("5/100000")
        run.signal_group(signal.SIGINT)  # Ctrl-C in a terminal: launcher and workers all get it
        assert run.wait() != 0
    finally:
        run.kill()
    log = run.output
    assert log.count("interrupted (SIGINT) at step") == 2, log[-3000:]  # each process saved, together
    assert "process(es) [1] had no readable study in this batch: process 0 leaves out its 2 readable studies" in log
    saved = [p for p in (out / "checkpoints").iterdir() if not verify_checkpoint(p)]
    assert len(saved) == 1
    state = _state(saved[0])
    assert state["skipped_studies"] == _simulate_skips(12, 2, 2, corrupt, steps=state["global_step"])
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["checkpoint"]["files"])
    # resuming this two-process checkpoint in one process would not continue it exactly: refused, naming why
    with pytest.raises(CheckpointError, match=r"the number of processes .*: checkpoint 2, now 1"):
        main([*argv[: argv.index("--max_steps")], "--max_steps", "100000", "--resume_from_checkpoint", "latest"])


def test_dataloader_workers_ending_an_epoch_do_not_stop_the_run(tmp_path, parity_dir, dataset):
    """The DataLoader's SIGCHLD handler fires when its workers exit at an epoch end; the signal watcher must not
    take that for a stop request (12 studies, 4 per step: the run crosses two epoch ends)."""
    result = main(_argv(parity_dir, dataset, tmp_path / "run", "--max_steps", "7", "--dataloader_num_workers", "1"))
    assert result["interrupted"] is False and result["exit_code"] == 0 and result["global_step"] == 7


def test_a_persistent_worker_draws_each_epoch_as_the_main_process_does(tmp_path, parity_dir, dataset):
    """The DataLoader worker lives across epochs (forked once), so the epoch travels with each study key: its
    augmentation, MLM and patch-masking draws match the run without workers step for step, across two epoch ends
    (12 studies, 4 per step). A worker left at epoch 0's draws would change the losses from step 4 on. The same
    worker serving the second and third epochs from its decoded-study cache trains bitwise the same."""
    runs = [
        main(_argv(parity_dir, dataset, tmp_path / f"run{w}{cache}", "--max_steps", "7", "--augment", "true",
                   "--dataloader_num_workers", str(w), "--cache_decoded_studies_mb", cache))
        for w, cache in ((0, "0"), (1, "0"), (1, "64"))
    ]  # fmt: skip
    assert [r["global_step"] for r in runs] == [7, 7, 7]
    assert runs[1]["loss_curve"] == runs[0]["loss_curve"]
    assert runs[2]["loss_curve"] == runs[0]["loss_curve"]
    assert len(runs[0]["loss_curve"]) == 7
