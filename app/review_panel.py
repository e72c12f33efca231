"""The inspector's review bar under the image view: verdict buttons, a note, the review band
typed in, the "to review" walk and its counters, and a banner for a read-only session.

It only shows state and emits requests; the window passes them to the controller, which
commits every decision to the session at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gallery import VERDICT_CHIPS

#: The verdict keys: shown on the buttons, in their tooltips and in Help > Keyboard shortcuts.
VERDICT_KEYS = {"ok": "A", "ng": "D", "unsure": "U", None: "C"}
NEXT_KEY = "R"  # the "to review" filter
NOTE_KEY = "Ctrl+E"


class ReviewPanel(QWidget):
    verdict_requested = Signal(object)  # "ok" | "ng" | "unsure" | None (clear)
    note_edited = Signal(str)
    normal_requested = Signal()  # "this one is normal"
    band_requested = Signal(object, object)  # low, high (None, None removes the band)
    note_done = Signal()  # Enter in the note: it is saved, the keys go back to the gallery

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.path: Optional[Path] = None
        self.banner = QLabel("")
        self.banner.setObjectName("readOnlyBanner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#6b4e00;color:#fff3cd;padding:4px 8px;border-radius:3px;")
        self.banner.hide()

        self.buttons: dict[Optional[str], QPushButton] = {}
        for verdict, text in (("ok", "OK"), ("ng", "NG"), ("unsure", "Unsure"), (None, "Clear")):
            b = QPushButton(f"{text}  ({VERDICT_KEYS[verdict]})")
            b.setToolTip(f"Verdict for this image: {text} — key {VERDICT_KEYS[verdict]}; committed at once")
            b.setCheckable(verdict is not None)
            if verdict is not None:
                b.setStyleSheet(f"QPushButton:checked {{ background: {VERDICT_CHIPS[verdict][1]}; color: white; }}")
            b.clicked.connect(lambda _c=False, v=verdict: self.verdict_requested.emit(v))
            self.buttons[verdict] = b
        self.normal_button = QPushButton("This one is normal")
        self.normal_button.setToolTip("Add the image to the session's good set and re-calibrate the threshold "
                                      "with it (no re-scoring)")
        self.normal_button.clicked.connect(self.normal_requested)
        self.note = QLineEdit()
        self.note.setPlaceholderText(f"Note on this image ({NOTE_KEY}; Enter keeps it)")
        self.note.editingFinished.connect(lambda: self.note_edited.emit(self.note.text()))
        self.note.returnPressed.connect(self.note_done)
        self.note_status = QLabel("")
        self.note_status.setObjectName("noteStatus")
        self.note_status.setStyleSheet("color:#7fd1a0;")
        self.note_status.hide()

        self.low = QDoubleSpinBox()
        self.high = QDoubleSpinBox()
        for spin, what in ((self.low, "at or below passes"), (self.high, "above fails")):
            spin.setDecimals(4)
            spin.setRange(-1e9, 1e9)
            spin.setKeyboardTracking(False)
            spin.setToolTip(f"Review band: a score {what}; between the two is to review (drag the band on the "
                            "histogram, or type)")
        self.band_button = QPushButton("Set band")
        self.band_button.clicked.connect(lambda: self.band_requested.emit(self.low.value(), self.high.value()))
        self.clear_band_button = QPushButton("No band")
        self.clear_band_button.clicked.connect(lambda: self.band_requested.emit(None, None))
        self.counters = QLabel("no review yet")
        self.counters.setObjectName("reviewCounters")
        self.band_warning = QLabel("")
        self.band_warning.setObjectName("bandWarning")
        self.band_warning.setWordWrap(True)
        self.band_warning.setStyleSheet("color:#f0b429;padding:0 6px;")
        self.band_warning.hide()

        row1 = QHBoxLayout()
        row1.setContentsMargins(6, 2, 6, 2)
        row1.addWidget(QLabel("Verdict"))
        for b in self.buttons.values():
            row1.addWidget(b)
        row1.addSpacing(8)
        row1.addWidget(self.normal_button)
        row1.addWidget(self.note, 1)
        row1.addWidget(self.note_status)
        row2 = QHBoxLayout()
        row2.setContentsMargins(6, 0, 6, 2)
        row2.addWidget(QLabel("Review band"))
        row2.addWidget(self.low)
        row2.addWidget(QLabel(".."))
        row2.addWidget(self.high)
        row2.addWidget(self.band_button)
        row2.addWidget(self.clear_band_button)
        row2.addSpacing(12)
        row2.addWidget(self.counters, 1, Qt.AlignRight)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.banner)
        lay.addLayout(row1)
        lay.addLayout(row2)
        lay.addWidget(self.band_warning)
        self.show_image(None, None, "")

    def show_image(self, path: Optional[Path], verdict: Optional[str], note: str) -> None:
        """The image the verdict buttons and the note apply to."""
        if path != self.path or path is None:
            self.note_status.hide()
        self.path = path
        for v, b in self.buttons.items():
            b.setEnabled(path is not None)
            if v is not None:
                b.setChecked(v == verdict)
        self.normal_button.setEnabled(path is not None)
        self.note.setEnabled(path is not None)
        if not self.note.hasFocus() or self.note.text() != note:
            self.note.setText(note)

    def show_note_saved(self) -> None:
        """The note was committed to the session: say so beside it."""
        self.note_status.setText("✓ note saved")
        self.note_status.show()

    def show_band(self, low: Optional[float], high: Optional[float]) -> None:
        for spin, v in ((self.low, low), (self.high, high)):
            if v is not None:
                spin.blockSignals(True)
                spin.setValue(v)
                spin.blockSignals(False)

    def show_counters(self, text: str, band_warning: str = "") -> None:
        """The counters, and a warning when the threshold contradicts the review band."""
        self.counters.setText(text)
        self.band_warning.setText(f"⚠ {band_warning}" if band_warning else "")
        self.band_warning.setVisible(bool(band_warning))

    def set_read_only(self, reason: str) -> None:
        """A banner while the session cannot be written (``reason``: who holds it); "" hides it."""
        self.banner.setText(f"Read-only session: {reason}. Verdicts, notes and thresholds are not recorded."
                            if reason else "")
        self.banner.setVisible(bool(reason))
