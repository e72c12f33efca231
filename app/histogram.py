"""Score histogram with a draggable threshold line.

Bars are stacked per bin: images at or below the threshold in the normal colour, flagged ones
in the accent colour. While the line is dragged only a count preview is updated; the
threshold itself is applied (``threshold_moved``) when the drag ends. Scores spanning more
than two decades are binned on a log axis, so that a few strong anomalies do not squeeze
every normal image into one bar.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.theme import ACCENT, NORMAL
from core.results.threshold import Threshold

LOG_SPAN = 100.0  # max/min score ratio above which the axis goes logarithmic by default


class HistogramPanel(QWidget):
    threshold_moved = Signal(float)  # the value the line was dropped at
    reset_requested = Signal()
    band_moved = Signal(float, float)  # the review band's two thresholds, when a drag ends
    curves_requested = Signal()  # "ROC / PR" from the inspector's verdicts

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.scores = np.zeros(0)
        self._sorted = np.zeros(0)
        self.threshold: Optional[Threshold] = None
        self.detector_name = ""
        self._log = False
        self._log_forced: Optional[bool] = None
        self._groups: Optional[np.ndarray] = None  # suspect flags of a grouped (zero-shot) scan
        self.source = ""  # where the threshold came from, in words (the controller's threshold_source)
        self.stale = ""  # "" or e.g. "previous run (ocsvm)"
        self.counts = None  # the window's ReviewCounts: "flagged" is its number (one source for every count)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.hideButtons()
        self.plot.showGrid(x=False, y=True, alpha=0.15)
        pi = self.plot.getPlotItem()
        pi.setLabel("bottom", "score")
        pi.getAxis("bottom").enableAutoSIPrefix(False)  # the axis reads in the units the badges use
        pi.setLabel("left", "images")
        self.normal_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=NORMAL, pen=pg.mkPen(None))
        self.flag_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=ACCENT, pen=pg.mkPen(None))
        self.calib = pg.ScatterPlotItem(symbol="t1", size=8, brush=pg.mkBrush("#e8e8e8"), pen=pg.mkPen(None))
        self.calib.setToolTip("the calibration scores the threshold was read from (held-out good images, or the out-of-fold "
                                "scores of cross-calibration)")
        self.line = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen(ACCENT, width=2),
                                    hoverPen=pg.mkPen("#ffffff", width=3),
                                    label="", labelOpts={"position": 0.93, "color": "#ffffff",
                                                         "fill": (30, 30, 30, 200), "movable": False})
        self.line.hide()
        # The review band: at or below its left edge passes, above its right edge fails, between is to review.
        self.band = pg.LinearRegionItem(brush=pg.mkBrush(255, 210, 63, 40), hoverBrush=pg.mkBrush(255, 210, 63, 70),
                                        pen=pg.mkPen("#ffd23f", width=2, style=pg.QtCore.Qt.DashLine))
        self.band.setZValue(-5)
        self.band.setToolTip("Review band: drag its edges; scores between them are to review")
        self.band.hide()
        self.band.sigRegionChangeFinished.connect(self._band_dropped)
        self.plot.addItem(self.band)
        self._band: Optional[tuple[float, float]] = None
        for item in (self.normal_bars, self.flag_bars, self.calib, self.line):
            self.plot.addItem(item)
        self.line.sigPositionChanged.connect(self._line_dragging)
        self.line.sigPositionChangeFinished.connect(self._line_dropped)

        self.count_label = QLabel("flagged: – / –")
        self.count_label.setObjectName("bigCount")
        self.info_label = QLabel("no scores yet")
        self.info_label.setObjectName("muted")
        self.info_label.setWordWrap(True)
        self.log_check = QCheckBox("Log axis")
        self.log_check.setToolTip("Bin scores on a logarithmic axis")
        self.log_check.clicked.connect(self._log_clicked)
        self.reset_button = QPushButton("Reset threshold")
        self.reset_button.setToolTip("Back to the threshold calibrated when the detector was trained")
        self.reset_button.clicked.connect(self.reset_requested)
        self.reset_button.setEnabled(False)
        self.curves_button = QPushButton("ROC / PR…")
        self.curves_button.setToolTip("ROC and precision-recall from your OK / NG verdicts, and the threshold "
                                      "that reaches a chosen recall")
        self.curves_button.clicked.connect(self.curves_requested)

        top = QHBoxLayout()
        top.addWidget(self.count_label, 1)
        top.addWidget(self.log_check)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.curves_button)
        bottom.addWidget(self.reset_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.info_label)  # the threshold's provenance on the panel's whole width, never clipped
        lay.addLayout(bottom)

    # ------------------------------------------------------------------ data in
    def set_scores(self, scores, threshold: Optional[Threshold], detector: str = "", suspect=None) -> None:
        """All scores shown now (called as rows arrive and when a result is complete).

        ``suspect`` (one bool per score) colours a zero-shot scan by its groups instead of a threshold."""
        s = np.asarray(list(scores), dtype=np.float64)
        finite = np.isfinite(s)
        self._groups = None if suspect is None else np.asarray(list(suspect), dtype=bool)[finite]
        self.scores = s[finite]
        self._sorted = np.sort(self.scores)
        self.detector_name = detector or self.detector_name
        if self._log_forced is None:
            self._log = self._wants_log()
            self.log_check.setChecked(self._log)
        self.set_threshold(threshold, rescale=True)

    def set_threshold(self, threshold: Optional[Threshold], rescale: bool = False) -> None:
        self.threshold = threshold
        self.reset_button.setEnabled(threshold is not None and threshold.method == "explicit")
        if threshold is None:
            self.line.hide()
        else:
            self.line.blockSignals(True)
            self.line.setValue(self._to_axis(threshold.value))
            self.line.blockSignals(False)
            self.line.show()
            self.line.setToolTip(f"{threshold.describe()}\nDrag to change it; release to apply.")
        self._redraw(rescale)
        self._place_band()

    def clear(self) -> None:
        self.set_scores([], None)
        self.set_band(None, None)

    def set_band(self, low: Optional[float], high: Optional[float]) -> None:
        """Show the review band (``None, None`` hides it)."""
        self._band = None if low is None or high is None else (float(low), float(high))
        self._place_band()

    def _place_band(self) -> None:
        if self._band is None:
            self.band.hide()
            return
        self.band.blockSignals(True)
        self.band.setRegion([self._to_axis(self._band[0]), self._to_axis(self._band[1])])
        self.band.blockSignals(False)
        self.band.show()

    def _band_dropped(self) -> None:
        try:
            lo, hi = (self._from_axis(v) for v in self.band.getRegion())
        except OverflowError:  # dragged far off a log axis
            self._place_band()
            return
        if math.isfinite(lo) and math.isfinite(hi):
            self._band = (float(lo), float(hi))
            self.band_moved.emit(float(lo), float(hi))

    def set_source(self, source: str) -> None:
        """Where the threshold in force came from (e.g. "calibrated at FPR 0.01 on 12 …, from the model m")."""
        self.source = source
        self._redraw(False)

    def set_stale(self, text: str) -> None:
        """Mark the scores as those of a previous run ("" when current); bars are greyed."""
        self.stale = text
        for bars in (self.normal_bars, self.flag_bars):
            bars.setOpacity(0.4 if text else 1.0)
        self._redraw(False)

    # ------------------------------------------------------------------ drawing
    def _wants_log(self) -> bool:
        s = self._sorted
        return bool(s.size > 1 and s[0] > 0 and s[-1] / s[0] > LOG_SPAN)

    def _to_axis(self, v: float) -> float:
        return math.log10(max(v, 1e-12)) if self._log else v

    def _from_axis(self, x: float) -> float:
        return 10.0 ** x if self._log else x

    def _redraw(self, rescale: bool) -> None:
        s = self.scores
        pi = self.plot.getPlotItem()
        pi.setLabel("bottom", "score (log axis)" if self._log else "score")
        thr = self.threshold
        if s.size == 0:
            self.plot.setXRange(0, 1, padding=0)
            pi.setLogMode(x=False)
            for bars in (self.normal_bars, self.flag_bars):
                bars.setOpts(x0=[], x1=[], height=[], y0=[])
            self.calib.setData([], [])
            self._set_count(None)
            return
        x = np.log10(np.clip(s, 1e-12, None)) if self._log else s
        n_bins = int(np.clip(2 * math.sqrt(s.size), 10, 60))
        lo, hi = float(x.min()), float(x.max())
        if thr is not None:
            t = self._to_axis(thr.value)
            lo, hi = min(lo, t), max(hi, t)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, n_bins + 1)
        if self._groups is not None and self._groups.size == s.size:
            flagged = self._groups
        else:
            flagged = s > thr.value if thr is not None else np.zeros(s.size, bool)
        h_norm, _ = np.histogram(x[~flagged], edges)
        h_flag, _ = np.histogram(x[flagged], edges)
        gap = (edges[1] - edges[0]) * 0.08
        x0, x1 = edges[:-1] + gap, edges[1:] - gap
        self.normal_bars.setOpts(x0=x0, x1=x1, height=h_norm, y0=np.zeros(n_bins))
        self.flag_bars.setOpts(x0=x0, x1=x1, height=h_flag, y0=h_norm)
        cal = thr.calibration_scores if thr is not None and thr.method == "calibrated" else []
        if cal:  # a rug under the bars: the held-out good scores the threshold rests on
            cx = np.log10(np.clip(cal, 1e-12, None)) if self._log else np.asarray(cal)
            top = max(1, int((h_norm + h_flag).max()))
            self.calib.setData(cx, np.full(len(cx), -0.03 * top))
        else:
            self.calib.setData([], [])
        if rescale:  # the range first: log ticks of a range still in linear units would overflow
            pad = (hi - lo) * 0.04
            self.plot.setXRange(lo - pad, hi + pad, padding=0)
            pi.setLogMode(x=self._log)
            top = max(1, int((h_norm + h_flag).max()))
            self.plot.setYRange(-0.06 * top, top * 1.1, padding=0)
            left = self.plot.getPlotItem().getAxis("left")
            if top <= 20:  # counts: whole numbers only
                step = 1 if top <= 8 else 2 if top <= 16 else 5
                left.setTickSpacing(step, step)
            else:
                left.setTickSpacing()
        self._set_count(self.counts.n_flagged if self.counts is not None and self.counts.n_images == s.size
                        else int(flagged.sum()))

    def set_counts(self, counts) -> None:
        """The controller's :class:`~core.results.review.ReviewCounts` of the scores shown."""
        self.counts = counts
        if self.scores.size and counts.n_images == self.scores.size:
            self._set_count(counts.n_flagged)

    def _set_count(self, flagged: Optional[int], preview: bool = False) -> None:
        n = self.scores.size
        if flagged is None:
            self.count_label.setText("flagged: – / –")
            self.info_label.setText("no scores yet")
            self.line.label.setFormat("")
            return
        self.count_label.setText(f"flagged: {flagged} / {n}" + ("  (release to apply)" if preview else ""))
        thr = self.threshold
        if self._groups is not None and thr is None:
            self.count_label.setText(f"suspect group: {flagged} / {n}")
            self.info_label.setText("zero-shot: flagged = suspect group (no threshold)")
            tip = f"detector {self.detector_name}\nbars coloured by the normal / suspect grouping"
        elif thr is not None:
            value = self._from_axis(self.line.value()) if preview else thr.value
            self.line.label.setFormat(f"{value:.4g}")
            how = self.source or ("set by hand" if thr.method == "explicit" else f"calibrated at FPR {thr.fpr:g}")
            self.info_label.setText(f"threshold {thr.value:.4g}, {how}")
            tip = f"detector {self.detector_name}\n{thr.describe()}\n{how}"
        else:
            self.info_label.setText("no threshold")
            tip = "no threshold set"
        if self.stale:
            self.info_label.setText(f"{self.stale}: {self.info_label.text()}")
            tip = f"{self.stale}: greyed until the new run replaces it\n{tip}"
        self.count_label.setToolTip(tip)
        self.info_label.setToolTip(tip)

    # ------------------------------------------------------------------ interaction
    def _line_dragging(self) -> None:
        value = self._from_axis(self.line.value())
        flagged = int(self._sorted.size - np.searchsorted(self._sorted, value, side="right"))
        self._set_count(flagged, preview=True)

    def _line_dropped(self) -> None:
        value = self._from_axis(self.line.value())
        if math.isfinite(value):
            self.threshold_moved.emit(float(value))

    def _log_clicked(self, on: bool) -> None:
        self._log_forced = on
        self._log = on
        self.set_threshold(self.threshold, rescale=True)
        self._place_band()

    def flagged_text(self) -> str:
        return self.count_label.text()

