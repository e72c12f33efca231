"""The results the window shows, as plain Python (no Qt), so they can be tested alone.

:class:`ViewState` holds the complete scan shown (or the rows of the scan in progress), the
threshold in force and where it came from, and the heat-map scale. The controller changes it
and tells the views; the views read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.results import ScanResult, ScanRow
from core.results.threshold import Threshold


class ViewState:
    def __init__(self) -> None:
        self.result: Optional[ScanResult] = None  # the complete scan shown (None while scanning)
        self.live: list[ScanRow] = []  # rows of the scan in progress
        self.previous: Optional[ScanResult] = None  # the complete scan a running one will replace
        self.threshold_override: Optional[Threshold] = None  # set by hand (the histogram line), or restored
        #: How the override came about: "set by hand", "set from the verdict ROC at recall 0.95", or for a
        #: restored run's re-calibration with images marked normal "re-calibrated ..." (not a hand decision).
        self.override_reason = "set by hand"
        self.model_source = ""  # where the model in memory came from: "trained now", "from the model m", …
        self.scored_by: object = None  # the model that scored the complete result shown (compared by identity)
        self.map_range: tuple[float, float] = (0.0, 1.0)  # the batch-wide heat-map scale (exports use it)
        self.heat_scale = None  # app.workers.HeatScale anchored at the threshold, or None
        self._rows_by_path: dict[str, ScanRow] = {}

    # ------------------------------------------------------------------ rows
    def rows(self) -> list[ScanRow]:
        """The rows shown now: the complete result, or the rows of the scan in progress."""
        return self.result.rows if self.result is not None else self.live

    def row_for(self, path: Path) -> Optional[ScanRow]:
        return self._rows_by_path.get(str(path))

    def set_result(self, result: Optional[ScanResult], scored_by: object = None) -> None:
        self.result = result
        self.scored_by = scored_by if result is not None else None
        self.live = []
        self._rows_by_path = {str(r.path): r for r in result.rows} if result else {}

    def begin_scan(self) -> None:
        """A scan starts: the shown result is kept aside until the new one completes."""
        self.previous = self.result
        self.result, self.live, self._rows_by_path = None, [], {}

    def add_rows(self, rows: list[ScanRow]) -> None:
        thr = self.threshold_override
        for row in rows:
            if thr is not None:
                row.flagged = thr.flags(row.score)
            self._rows_by_path[str(row.path)] = row
        self.live.extend(rows)

    def finish_scan(self, result: ScanResult, scored_by: object = None) -> None:
        if self.threshold_override is not None:
            result.apply_threshold(self.threshold_override)
        self.previous = None
        self.set_result(result, scored_by)

    def abandon_scan(self) -> tuple[int, Optional[ScanResult]]:
        """A scan that did not complete: its partial rows are dropped and the previous
        complete result (if any) is shown again. Returns (partial rows dropped, previous)."""
        n = len(self.live)
        prev, self.previous = self.previous, None
        self.set_result(prev, self.scored_by)
        return n, prev

    def stale(self, model: object, running: bool) -> str:
        """"" when the results shown are current; otherwise what they are ("previous run (ocsvm)"):
        a new run (``running``) is under way, or ``model`` (the one in memory) did not score them."""
        shown = self.result if self.result is not None else self.previous
        if shown is not None and (running or model is not self.scored_by):
            return f"previous run ({shown.detector})"
        return ""

    @property
    def hand_threshold(self) -> Optional[Threshold]:
        """The override when the inspector set it (by hand or from the verdict ROC), else None."""
        o = self.threshold_override
        return o if o is not None and not self.override_reason.startswith("re-calibrated") else None

    def threshold_source(self, detector_threshold: Optional[Threshold]) -> str:
        """Where the threshold in force came from, in words (shown beside it everywhere)."""
        thr = self.threshold(detector_threshold)
        if thr is None:
            return "no threshold"
        if self.threshold_override is not None:
            how = self.override_reason or "set by hand"
        elif thr.method == "explicit":
            how = "set by hand"
        else:
            how = thr.calibrated_on("good")
        if self.threshold_override is None and self.model_source:
            return f"{how}, {self.model_source}"
        return how

    def clear(self) -> None:
        self.set_result(None)
        self.previous = None

    # ------------------------------------------------------------------ threshold
    def threshold(self, detector_threshold: Optional[Threshold]) -> Optional[Threshold]:
        """The threshold in force: a hand-set one, else the shown result's, else the model's."""
        if self.threshold_override is not None:
            return self.threshold_override
        if self.result is not None:
            return self.result.threshold
        return detector_threshold

    def apply_threshold(self, override: Optional[Threshold], fallback: Optional[Threshold] = None,
                        reason: str = "set by hand") -> Optional[Threshold]:
        """Set (or clear) the hand-set threshold (``reason``: how it came about) and re-flag every
        shown row; returns the one in force."""
        self.threshold_override = override
        self.override_reason = reason
        thr = override or fallback
        if self.result is not None:
            self.result.apply_threshold(thr)
        for r in self.live:
            r.flagged = None if thr is None else thr.flags(r.score)
        return thr
