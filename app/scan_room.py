"""Scanning the open folder and showing a result: the scan job (into the folder's session when it
has one, keeping the model), its rows as they come, the complete or abandoned outcome, and the
heat maps' colour scales of whatever is shown (:class:`~app.heat_range.HeatRange`). The rows and
the threshold in force are :class:`~app.view_state.ViewState`'s (plain Python).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.heat_range import HeatRange
from app.job_tracker import JobTracker
from app.session_state import LogFn
from app.view_state import ViewState
from core.data.images import ImageSource
from core.detectors.base import Detector
from core.engine.jobs import CallableJob, ScanJob
from core.engine.session_model import scan_keeping_model
from core.results import ScanResult
from core.results.threshold import Threshold
from core.session import Session


class ScanRoom(QObject):
    scan_started = Signal(int)  # number of images to score
    rows_arrived = Signal(list)  # [ScanRow] of the scan in progress
    result_changed = Signal(object)  # the complete ScanResult shown now, or None
    map_range_changed = Signal(float, float)  # one heat-map scale for the batch
    heat_scale_changed = Signal(object)  # HeatScale anchored at the threshold, or None
    scanned = Signal(object, object)  # the complete ScanResult (not shown yet), (SessionScan, kept model, why) or None

    def __init__(self, jobs: JobTracker, state: ViewState, log: LogFn, anchor: Callable[[], Optional[float]],
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self.state, self.log = jobs, state, log
        self.heat = HeatRange(jobs, state.rows, lambda: state.result is None, anchor, self)
        self.heat.computed.connect(self._range_computed)
        self.detector: Optional[Detector] = None  # the model of the scan under way (or of the last one)

    def show(self, result: Optional[ScanResult]) -> None:
        """``result`` is what the window shows now (None: nothing)."""
        self.heat.stop()  # an estimate under way is superseded
        self.state.set_result(result, self.state.scored_by)  # the scorer was recorded when the scan ended
        if not any(r.anomaly_map is not None for r in self.state.rows()):
            self._range_computed((0.0, 1.0), None)  # no maps shown: no scale of earlier ones lingers
        self.result_changed.emit(result)
        self.heat.request()

    def start(self, det: Detector, source: ImageSource, session: Optional[Session], hand: Optional[Threshold],
              good: Optional[Path]) -> None:
        """Score ``source`` with ``det`` (threshold ``hand`` when the inspector set one); into
        ``session`` (incremental: only new or changed images are scored; the model is kept) when given."""
        self.state.begin_scan()
        self.detector = det
        if session is not None:
            job = CallableJob(lambda p, c, e: scan_keeping_model(session, det, source, good, threshold=hand, progress=p,
                                                                 cancel=c, on_row=lambda i, row: e((i, row)),
                                                                 keep_extras=True),
                              title=f"Scoring {len(source)} images with {det.name} into the session")
            done = lambda out: self.scanned.emit(out[0].result, out)  # noqa: E731
        else:
            job = ScanJob(det, source, threshold=hand, keep_extras=True)
            done = lambda result: self.scanned.emit(result, None)  # noqa: E731
        self.jobs.submit(job, "scan", done, main=True, on_partial=self._rows,
                         on_failure=lambda msg, tb: self._ended(f"Scan failed: {msg}", "error"),
                         on_cancel=lambda: self._ended("Scan cancelled", "warning"))
        self.scan_started.emit(len(source))

    def finish(self, result: ScanResult) -> None:
        """Show a complete scan (after the controller has settled its threshold)."""
        self.state.finish_scan(result, scored_by=self.detector)
        self.show(result)

    def _rows(self, partials: list) -> None:
        rows = [row for _i, row in partials]
        self.state.add_rows(rows)
        self.rows_arrived.emit(rows)
        self.heat.request()

    def _ended(self, what: str, level: str) -> None:
        """A scan that did not complete: its partial rows are discarded, never shown as final."""
        n, prev = self.state.abandon_scan()
        self.show(prev)
        tail = "showing the previous complete scan" if prev is not None else "no results are shown"
        self.log(level, f"{what}: {n} partial scores discarded; {tail}.")

    def _range_computed(self, rng: tuple[float, float], scale) -> None:
        self.state.map_range = rng
        self.state.heat_scale = scale
        self.map_range_changed.emit(*rng)
        self.heat_scale_changed.emit(scale)
