"""The grouping view of a zero-shot scan: every image's score as a strip plot coloured by its
group (normal / suspect), the group sizes, the cut value, the method, and a way to move the
selected image to the other group. It only shows and asks: the controller changes the groups
(:func:`core.engine.workflows.regroup` / ``move_to_group``) and exports follow them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.theme import ACCENT, NORMAL, SELECTION
from core.results import ScanResult

METHOD_TITLES = {"ncut": "normalized cut", "kmeans": "k-means", "gmm": "Gaussian mixture"}


def jitter(n: int) -> np.ndarray:
    """Fixed vertical offsets in [-0.35, 0.35] so that equal scores do not hide each other."""
    return (np.random.default_rng(12345).random(n) - 0.5) * 0.7


class GroupingPanel(QWidget):
    method_changed = Signal(str)  # the inspector chose another grouping method
    move_requested = Signal(object)  # Path: move this image to the other group
    image_clicked = Signal(object)  # Path of a clicked point

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.result: Optional[ScanResult] = None
        self.paths: list[Path] = []
        self.current: Optional[Path] = None
        self.stale = ""  # "" or e.g. "previous run (ldm-zero-shot)"
        self._info = ""

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.hideButtons()
        pi = self.plot.getPlotItem()
        pi.setLabel("bottom", "score")  # named after the detector once a result comes (set_result)
        pi.getAxis("bottom").enableAutoSIPrefix(False)  # the axis reads in the units the badges use
        pi.hideAxis("left")
        self.plot.setYRange(-1.6, 1.6, padding=0)
        self.points = pg.ScatterPlotItem(size=9, pen=pg.mkPen(None), hoverable=True, tip=self._point_tip)
        self.points.sigClicked.connect(self._clicked)
        self.marker = pg.ScatterPlotItem(size=16, brush=pg.mkBrush(None), pen=pg.mkPen(SELECTION, width=2))
        self.plot.addItem(self.points)
        self.plot.addItem(self.marker)
        self.normal_text = pg.TextItem("normal", color=NORMAL, anchor=(0, 0.5))
        self.suspect_text = pg.TextItem("suspect", color=ACCENT, anchor=(0, 0.5))
        for t in (self.normal_text, self.suspect_text):
            self.plot.addItem(t)

        self.sizes_label = QLabel("no groups yet")
        self.sizes_label.setObjectName("bigCount")
        self.info_label = QLabel("Run a zero-shot detector to split the batch into a normal and a suspect group.")
        self.info_label.setObjectName("muted")
        self.info_label.setWordWrap(True)
        self.method_combo = QComboBox()
        for key, title in METHOD_TITLES.items():
            self.method_combo.addItem(title, key)
        self.method_combo.setToolTip("How the scores are split into two groups (the larger group is normal)")
        # no method until a scan has grouped (the first entry would read as the default, and each
        # zero-shot detector has its own: mutual's is the Gaussian mixture)
        self.method_combo.setPlaceholderText("no grouping yet")
        self.method_combo.setCurrentIndex(-1)
        self.method_combo.activated.connect(lambda _i: self.method_changed.emit(self.method_combo.currentData()))
        self.move_button = QPushButton("Move to other group")
        self.move_button.setToolTip("Move the selected image to the other group (also in the gallery's context menu)")
        self.move_button.clicked.connect(lambda: self.current and self.move_requested.emit(self.current))

        top = QHBoxLayout()
        top.addWidget(self.sizes_label, 1)
        top.addWidget(self.method_combo)
        bottom = QHBoxLayout()
        bottom.addWidget(self.info_label, 1)
        bottom.addWidget(self.move_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)
        lay.addStretch(0)
        lay.addLayout(bottom)
        self.plot.hide()  # no axis and no group labels until there are groups to show
        for t in (self.normal_text, self.suspect_text):
            t.hide()
        self._sync_enabled()

    # ------------------------------------------------------------------ data in
    def set_result(self, result: Optional[ScanResult]) -> None:
        self.result = result if result is not None and result.grouping is not None else None
        if self.result is None:
            self.paths = []
            self.points.setData([], [])
            self.marker.setData([], [])
            self.plot.hide()
            for t in (self.normal_text, self.suspect_text):
                t.hide()
            self.sizes_label.setText("no groups yet")
            self.method_combo.setCurrentIndex(-1)
            note = result.grouping_note if result is not None else ""
            self._set_info(f"Not grouped: {note}" if note else
                           "Run a zero-shot detector to split the batch into a normal and a suspect group.")
            self._sync_enabled()
            return
        self.plot.show()
        self.plot.getPlotItem().setLabel("bottom", f"{self.result.detector} score")
        for t in (self.normal_text, self.suspect_text):
            t.show()
        g = self.result.grouping
        i = self.method_combo.findData(g.method)
        if i >= 0:
            self.method_combo.setCurrentIndex(i)
        self._redraw()

    def set_current(self, path: Optional[Path]) -> None:
        self.current = path
        self._draw_marker()
        self._sync_enabled()

    # ------------------------------------------------------------------ drawing
    def _redraw(self) -> None:
        res = self.result
        g = res.grouping
        self.paths = [r.path for r in res.rows]
        scores = np.array([r.score for r in res.rows], dtype=np.float64)
        labels = np.asarray(g.labels)
        y = np.where(labels == 1, 1.0, -1.0) * 0.8 + jitter(len(scores)) * 0.8
        brushes = [pg.mkBrush(ACCENT if lab else NORMAL) for lab in labels]
        self.points.setData(x=scores, y=y, brush=brushes, data=list(range(len(scores))))
        self._y = y
        lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
        pad = (hi - lo) * 0.05 or 0.5
        self.plot.setXRange(lo - pad, hi + pad, padding=0)
        self.normal_text.setPos(lo - pad, -1.4)
        self.suspect_text.setPos(lo - pad, 1.4)
        normal, suspect = g.sizes
        self.sizes_label.setText(f"normal: {normal}   suspect: {suspect}")
        parts = [f"{METHOD_TITLES.get(g.method, g.method)}"]
        if g.cut_value is not None:
            parts.append(f"cut value {g.cut_value:.4g}")
        if g.moved:
            parts.append(f"{len(g.moved)} moved by hand")
        parts.append("larger group = normal; flagged = suspect")
        self._set_info(" · ".join(parts))
        self._draw_marker()
        self._sync_enabled()

    def _draw_marker(self) -> None:
        if self.result is None or self.current is None:
            self.marker.setData([], [])
            return
        key = str(self.current)
        for i, p in enumerate(self.paths):
            if str(p) == key:
                self.marker.setData([self.result.rows[i].score], [self._y[i]])
                return
        self.marker.setData([], [])

    def set_stale(self, text: str) -> None:
        """Grey the groups out as those of a previous run (``text`` says which; "" when current).
        Groups of a previous run cannot be edited."""
        self.stale = text
        self.points.setOpacity(0.35 if text else 1.0)
        self._set_info(self._info)
        self._sync_enabled()

    def _set_info(self, text: str) -> None:
        self._info = text
        shown = f"{self.stale}, greyed until the new run replaces it · {text}" if self.stale and self.result else text
        self.info_label.setText(shown)

    def _sync_enabled(self) -> None:
        on = self.result is not None and not self.stale
        self.method_combo.setEnabled(on)
        self.move_button.setEnabled(on and self.current is not None
                                    and any(str(p) == str(self.current) for p in self.paths))

    def _point_tip(self, x, y, data) -> str:
        if self.result is None or data is None:
            return ""
        row = self.result.rows[int(data)]
        return f"{row.path.name}\nscore {row.score:.6g}\n{row.columns.get('group', '')} group"

    def _clicked(self, _item, points, *_args) -> None:
        if len(points):
            self.image_clicked.emit(self.paths[int(points[0].data())])

    def group_of(self, path: Path) -> Optional[str]:
        if self.result is None:
            return None
        for r in self.result.rows:
            if str(r.path) == str(path):
                return r.columns.get("group")
        return None
