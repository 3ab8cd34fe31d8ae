"""Signals in `training/align.py`: Ctrl-C and SIGTERM stop a run cleanly, a second one forces the exit, and
processes started by a launcher exit when their launcher dies.

- The first SIGINT or SIGTERM asks the run to stop after the current optimizer step; the run then saves a checkpoint
  and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a killed job.
- A repeat of the signal within `REPEAT_WINDOW` seconds is the same request: a launcher (torchrun,
  `accelerate launch`) forwards the Ctrl-C the terminal already sent to every process of the group, so each worker
  receives it twice at once.
- A later signal exits at once (`os._exit`), without saving: the way out of a save or a collective that hangs.
- During the final export a signal does not interrupt: the run has finished, the export completes, the run
  exits 0 (a second signal still forces the exit; `model/` is published by one rename, so no half folder is left).

The signals are handled by a watcher thread fed through `signal.set_wakeup_fd`, so they are acted on even while
the main thread is blocked in C code (a collective waiting for a dead peer), where a Python-level handler would
never run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time


logger = logging.getLogger("alta.align")

REPEAT_WINDOW = 1.0  # seconds within which a repeated signal counts as the same request
HANDLED_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say(text: str) -> None:
    """Write a line to stderr without the logging machinery (safe right before `os._exit`)."""
    with contextlib.suppress(OSError):
        os.write(2, (text.rstrip("\n") + "\n").encode())


class InterruptMonitor:
    """Turns SIGINT/SIGTERM into a stop request (see the module docstring). Install it from the main thread.

    Attributes:
        signum: the first signal received (None: none yet).
        phase: `"train"` (a signal stops the run after the current step) or `"export"` (the run has finished; a
            signal does not stop the export).
    """

    def __init__(self, repeat_window: float = REPEAT_WINDOW) -> None:
        self.repeat_window = repeat_window
        self.signum: int | None = None
        self.phase = "train"
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self._fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (0 when no signal arrived)."""
        return 128 + self.signum if self.signum is not None else 0

    def install(self) -> InterruptMonitor:
        if threading.current_thread() is not threading.main_thread() or not HANDLED_SIGNALS:
            return self  # signals can only be set up in the main thread; callers in other threads get no handling
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._fds = (read_fd, write_fd)
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            # The C-level handler that Python installs writes the signal number to the wakeup fd; the Python-level
            # handler itself has nothing to do (the watcher thread acts).
            self._previous[signum] = signal.signal(signum, lambda s, f: None)
        self._thread = threading.Thread(target=self._watch, name="alta-signal-watcher", daemon=True)
        self._thread.start()
        return self

    def uninstall(self) -> None:
        if self._fds is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        read_fd, write_fd = self._fds
        self._fds = None
        with contextlib.suppress(OSError):
            os.write(write_fd, b"\0")  # wakes the watcher, which then closes the pipe
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> InterruptMonitor:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _watch(self) -> None:
        read_fd = self._fds[0] if self._fds else -1
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return
                # The wakeup fd carries every signal that has a Python handler, not only ours: the DataLoader's
                # SIGCHLD handler fires whenever a worker exits (at each epoch end), which is no stop request.
                if signum in HANDLED_SIGNALS:
                    self.handle(signum)

    def handle(self, signum: int) -> None:
        """What a received signal does (called by the watcher thread)."""
        now = time.monotonic()
        name = _name(signum)
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if self.phase == "export":
                _say(
                    f"[alta] received {name} during the final export: the run has finished, so the export "
                    f"completes first (send {name} again to abort it)"
                )
            else:
                _say(
                    f"[alta] received {name}: stopping after the current step, then saving a checkpoint "
                    f"(send {name} again to exit at once without saving)"
                )
            return
        if now - self._first_at < self.repeat_window:
            return  # the same request, forwarded by a launcher
        _say(f"[alta] received {name} again: exiting now without saving")
        os._exit(128 + signum)


# ---------------------------------------------------------------------------------------------------------------
# Following the launcher
# ---------------------------------------------------------------------------------------------------------------


def launched_by_launcher() -> bool:
    """True when a launcher started this process: torchrun / `accelerate launch` with several processes (torch
    elastic sets `TORCHELASTIC_RUN_ID`), or `accelerate launch`'s one-process launcher (the parent runs it)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    try:
        import psutil

        parent = " ".join(psutil.Process(os.getppid()).cmdline())
    except Exception:
        return False
    return "accelerate" in parent and "launch" in parent


def _set_parent_death_signal(signum: int) -> bool:
    """Linux `prctl(PR_SET_PDEATHSIG)`: the kernel sends `signum` when the parent dies. False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signum, 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


def exit_with_launcher(grace_seconds: float = 120.0, poll_seconds: float = 1.0) -> bool:
    """Make this process stop when the launcher that started it dies (e.g. `accelerate launch` SIGKILLed).

    The process gets SIGTERM when its parent dies (Linux: `PR_SET_PDEATHSIG`; elsewhere a watcher thread that
    polls the parent sends it), which an installed `InterruptMonitor` turns into "save and exit 143". If the process
    is still alive `grace_seconds` after the launcher died (a save or collective that cannot finish without it), it
    exits with 143 anyway. Does nothing (returns False) when no launcher started the process: a plain `python
    align.py` run keeps its usual relation to the shell.
    """
    if not launched_by_launcher():
        return False
    parent = os.getppid()
    kernel = _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the launcher died before the death signal was armed
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        _say(f"[alta] the launcher (pid {parent}) is gone: stopping this process (pid {os.getpid()})")
        if not kernel:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        _say(f"[alta] still running {grace_seconds:.0f} s after the launcher died: exiting now")
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="alta-launcher-watcher", daemon=True).start()
    return True


__all__ = ["REPEAT_WINDOW", "InterruptMonitor", "exit_with_launcher", "launched_by_launcher"]
