"""ROC and precision-recall from the inspector's own verdicts, and the threshold that reaches a
chosen recall (computed in :mod:`core.metrics.curves`; this only draws it and offers to apply it)."""

from __future__ import annotations

from typing import Optional

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog, QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from app.theme import ACCENT
from core.metrics.curves import Curves, RecallThreshold


class CurvesDialog(QDialog):
    recall_changed = Signal(float)
    apply_requested = Signal(float, float)  # the suggested threshold, the recall asked for

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("ROC / precision-recall from the verdicts")
        self.suggestion: Optional[RecallThreshold] = None
        self.roc = pg.PlotWidget()
        self.pr = pg.PlotWidget()
        for plot, (x, y) in ((self.roc, ("false-positive rate (OK flagged)", "recall (NG flagged)")),
                             (self.pr, ("recall", "precision"))):
            plot.setMenuEnabled(False)
            plot.hideButtons()
            plot.setLabel("bottom", x)
            plot.setLabel("left", y)
            plot.setXRange(0, 1, padding=0.02)
            plot.setYRange(0, 1, padding=0.02)
        self.roc_curve = self.roc.plot([], [], pen=pg.mkPen(ACCENT, width=2), stepMode=None)
        self.pr_curve = self.pr.plot([], [], pen=pg.mkPen(ACCENT, width=2))
        self.roc_mark = pg.ScatterPlotItem(size=10, brush=pg.mkBrush("#ffd23f"))
        self.pr_mark = pg.ScatterPlotItem(size=10, brush=pg.mkBrush("#ffd23f"))
        self.roc.addItem(self.roc_mark)
        self.pr.addItem(self.pr_mark)
        self.recall = QDoubleSpinBox()
        self.recall.setRange(0.01, 1.0)
        self.recall.setSingleStep(0.05)
        self.recall.setDecimals(2)
        self.recall.setValue(0.95)
        self.recall.setToolTip("Share of the images judged NG that the threshold must flag")
        self.recall.valueChanged.connect(self.recall_changed)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.apply_button = QPushButton("Use this threshold")
        self.apply_button.clicked.connect(lambda: self.suggestion and self.apply_requested.emit(
            self.suggestion.threshold, self.recall.value()))
        plots = QHBoxLayout()
        plots.addWidget(self.roc)
        plots.addWidget(self.pr)
        row = QHBoxLayout()
        row.addWidget(QLabel("Recall wanted"))
        row.addWidget(self.recall)
        row.addWidget(self.info, 1)
        row.addWidget(self.apply_button)
        lay = QVBoxLayout(self)
        lay.addLayout(plots, 1)
        lay.addLayout(row)
        self.resize(820, 420)

    def show_curves(self, curves: Optional[Curves], suggestion: Optional[RecallThreshold], why: str = "") -> None:
        self.suggestion = suggestion
        if curves is None:
            for item in (self.roc_curve, self.pr_curve):
                item.setData([], [])
            self.info.setText(why or "Needs both OK and NG verdicts.")
        else:
            self.roc_curve.setData([0.0, *curves.fpr], [0.0, *curves.tpr])
            self.pr_curve.setData(list(curves.tpr), list(curves.precision))
            self.info.setText(f"AUROC {curves.auroc:.3f} from {curves.n_pos} NG, {curves.n_neg} OK verdicts "
                              "(unsure ones left out). " +
                              (f"Suggested: {suggestion.describe()}." if suggestion else ""))
        if suggestion is not None:
            self.roc_mark.setData([suggestion.fpr], [suggestion.recall])
            prec = None
            if curves is not None:
                i = int(abs(curves.tpr - suggestion.recall).argmin())
                prec = float(curves.precision[i])
            self.pr_mark.setData([suggestion.recall], [prec] if prec is not None else [])
        else:
            self.roc_mark.setData([], [])
            self.pr_mark.setData([], [])
        self.apply_button.setEnabled(suggestion is not None)
