"""A training process under test: started for real, its output read as it comes, signalled by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..conftest import REPO_ROOT


def align_command(argv: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "training" / "align.py"), *argv]


def accelerate_command(argv: list[str], num_processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO_ROOT / "training" / "align.py"), *argv,
    ]  # fmt: skip


def local_launch_command(argv: list[str], num_processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "training.launch_local", "--num_processes", str(num_processes),
        str(REPO_ROOT / "training" / "align.py"), *argv,
    ]  # fmt: skip


class LiveProcess:
    """`Popen` in its own session (so the test can signal it, or its whole group, by pid), output collected by a
    thread (so a full pipe never blocks it)."""

    def __init__(self, command: list[str], threads: int = 1) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 240.0, count: int = 1) -> None:
        """Wait until `text` appeared `count` times in the output; fail with the output tail otherwise."""
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output[-4000:]}")
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """As a terminal does for Ctrl-C: the signal goes to every process of the group."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 240.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.output[-4000:]}") from None
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        """SIGKILL the process and what it started (its session's group), for cleanup."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0
