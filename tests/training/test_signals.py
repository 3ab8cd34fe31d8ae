"""`InterruptMonitor` reacts to SIGINT/SIGTERM only, not to other signals that reach its wakeup fd."""

from __future__ import annotations

import os
import signal
import time

import pytest

from training.signals import InterruptMonitor


@pytest.mark.skipif(not hasattr(signal, "SIGCHLD"), reason="POSIX signals")
def test_sigchld_of_a_dataloader_worker_is_not_a_stop_request() -> None:
    # torch's DataLoader installs a Python SIGCHLD handler; every such signal also reaches the wakeup fd.
    previous = signal.signal(signal.SIGCHLD, lambda s, f: None)
    try:
        with InterruptMonitor() as monitor:
            os.kill(os.getpid(), signal.SIGCHLD)
            time.sleep(0.3)
            assert monitor.signum is None and not monitor.requested
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while monitor.signum is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert monitor.signum == signal.SIGTERM and monitor.exit_code == 143
    finally:
        signal.signal(signal.SIGCHLD, previous)
