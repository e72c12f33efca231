"""Progress reporting that knows nothing of Qt.

A progress callback is any ``callable(done, total, message)``. :class:`Progress` wraps one,
so that a detector can report nested stages (``progress.stage("fit", 0.0, 0.8)``) and
the caller sees one monotonic fraction. :class:`Throttle` limits how often a callback fires
(the GUI wants about ten updates a second, not one per image).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

ProgressFn = Callable[[int, int, str], None]


def null_progress(done: int, total: int, message: str = "") -> None:  # noqa: ARG001
    return None


class Throttle:
    """Forward at most one call per ``interval`` seconds, always the first and the last."""

    def __init__(self, fn: ProgressFn, interval: float = 0.1) -> None:
        self._fn = fn
        self._interval = interval
        self._last = -1e9

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if done >= total or done == 0 or now - self._last >= self._interval:
            self._last = now
            self._fn(done, total, message)


class SubProgress:
    """Maps a stage's own (done, total) onto a slice [start, end] of a parent in per-mille."""

    SCALE = 1000

    def __init__(self, parent: Optional[ProgressFn], start: float, end: float, label: str = "") -> None:
        self._parent = parent
        self._start = start
        self._end = end
        self._label = label

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self._parent is None:
            return
        frac = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
        pos = self._start + (self._end - self._start) * frac
        text = f"{self._label}: {message}" if self._label and message else (self._label or message)
        self._parent(int(round(pos * self.SCALE)), self.SCALE, text)
