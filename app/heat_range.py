"""The heat maps' colour scales for the batch shown: the batch-wide range (the one exports use)
and the scale anchored at the threshold, computed off the UI thread, one job at a time.

While a scan runs the scales are estimated from at most ``RANGE_SAMPLE`` maps, at most once
every ``RANGE_INTERVAL`` seconds; the complete result gets the scales of all its maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

from PySide6.QtCore import QObject, QTimer, Signal

from app.job_tracker import JobTracker
from app.workers import HeatScale, anchored_scale
from core.engine.jobs import CallableJob
from core.io.colormap import robust_range
from core.results import ScanResult, ScanRow

RANGE_SAMPLE = 256  # maps a heat-map scale estimate looks at while a scan runs
RANGE_INTERVAL = 1.0  # seconds between such estimates


def anchor_score(threshold: Optional[float], result: Optional[ScanResult]) -> Optional[float]:
    """The score the heat maps are anchored at: the threshold in force, or for a grouped
    zero-shot scan the boundary between its groups."""
    if threshold is not None:
        return threshold
    if result is not None and result.grouping is not None:
        normal = [r.score for r in result.rows if not r.flagged]
        suspect = [r.score for r in result.rows if r.flagged]
        if normal and suspect:
            return (max(normal) + min(suspect)) / 2.0
    return None


class HeatRange(QObject):
    """Asks for the scales of ``rows()`` whenever :meth:`request` is called; ``computed`` gives
    the batch range and the anchored scale (None when there is nothing to anchor at)."""

    computed = Signal(object, object)  # (lo, hi), HeatScale | None

    def __init__(self, jobs: JobTracker, rows: Callable[[], list[ScanRow]], live: Callable[[], bool],
                 anchor: Callable[[], Optional[float]], parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self._rows, self._live, self._anchor = jobs, rows, live, anchor
        self._dirty = False
        self._last = -1e9
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.request)

    def stop(self) -> None:
        """Forget any estimate under way or waiting (the shown rows changed)."""
        self._timer.stop()
        self.jobs.drop_helper("range")

    def request(self) -> None:
        if self.jobs.helper_running("range"):
            self._dirty = True
            return
        rows = [r for r in self._rows() if r.anomaly_map is not None]
        if not rows:
            return
        if self._live():  # a scan in progress: a quick estimate, not too often
            wait = RANGE_INTERVAL - (time.monotonic() - self._last)
            if wait > 0:
                self._dirty = True
                self._timer.start(int(wait * 1000) + 1)
                return
            rows = rows[:: max(1, len(rows) // RANGE_SAMPLE)]
        self._dirty = False
        self._last = time.monotonic()
        maps, scores, anchor_at = [r.anomaly_map for r in rows], [r.score for r in rows], self._anchor()

        def work(p, c, e) -> tuple[tuple[float, float], Optional[HeatScale]]:
            return robust_range(maps), anchored_scale(scores, maps, anchor_at)

        self.jobs.submit(CallableJob(work, title="heat-map scale"), "range", self._done)

    def _done(self, out) -> None:
        rng, scale = out
        self.computed.emit((float(rng[0]), float(rng[1])), scale)
        if self._dirty and not self._timer.isActive():
            self.request()
