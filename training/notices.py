"""Warnings about individual studies in a training run (unreadable, truncated), kept readable at any scale.

Each study is named once per process (a study that stays unreadable is drawn again every epoch); the first few are
logged in full, then at most one line per interval says how many more there were, and the run ends with a summary.
A wrong `--image_root` thus costs a handful of log lines, not millions.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any


_STUDY_INDEX = re.compile(r"^study index (\d+)")


def study_key(message: str) -> Any:
    """The study a collator message is about (`"study index N: ..."` -> N); the message itself otherwise."""
    match = _STUDY_INDEX.match(message)
    return int(match.group(1)) if match else message


class StudyNotices:
    """Rate-limited, once-per-study warnings of one kind.

    Args:
        what: how each line starts, e.g. `"skipping unreadable study"`.
        logger: where to log.
        first: studies logged in full before switching to periodic counts.
        interval: seconds between two periodic count lines.
        keep: example messages kept for the summary and the run's results.
    """

    def __init__(
        self, what: str, logger: logging.Logger, first: int = 10, interval: float = 60.0, keep: int = 20
    ) -> None:
        self.what = what
        self.logger = logger
        self.first = first
        self.interval = interval
        self.keep = keep
        self.occurrences = 0
        self.studies: set[Any] = set()
        self.examples: list[str] = []
        self._pending = 0
        self._last = time.monotonic()
        self._latest = ""

    def record(self, messages: list[str]) -> None:
        for message in messages:
            self.occurrences += 1
            key = study_key(message)
            if key in self.studies:
                continue
            self.studies.add(key)
            if len(self.examples) < self.keep:
                self.examples.append(message)
            if len(self.studies) <= self.first:
                self.logger.warning("%s: %s", self.what, message)
                if len(self.studies) == self.first:
                    self.logger.warning(
                        "%s: further studies are counted and reported every %.0f s and at the end",
                        self.what,
                        self.interval,
                    )
                self._last = time.monotonic()
                continue
            self._pending += 1
            self._latest = message
        self.flush()

    def flush(self, force: bool = False) -> None:
        if not self._pending or (not force and time.monotonic() - self._last < self.interval):
            return
        self.logger.warning(
            "%s: %d more studies (%d so far on this process); latest: %s",
            self.what,
            self._pending,
            len(self.studies),
            self._latest,
        )
        self._pending = 0
        self._last = time.monotonic()

    def summary(self) -> str | None:
        """One line over the whole run (None when nothing was recorded)."""
        self.flush(force=True)
        if not self.studies:
            return None
        shown = "; ".join(self.examples[:5])
        more = f" (first {min(5, len(self.examples))}: {shown})" if shown else ""
        return f"{self.what}: {len(self.studies)} studies on this process, {self.occurrences} times{more}"


__all__ = ["StudyNotices", "study_key"]
