"""The side panels: folder, detector (with its generated settings form) and log."""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.input_guard import guard_inputs
from app.number_fields import number_editor
from app.theme import ACCENT
from app.workers import split_patterns
from core.detectors.config import DetectorConfig, field_type
from core.detectors.registry import REGISTRY, default_detector, detector_names
from core.results.threshold import DEFAULT_FPR
from core.runtime.device import DEVICE_CHOICES

MAX_LOG_LINES = 10000


def _label(text: str = "", name: str = "", wrap: bool = False) -> QLabel:
    lab = QLabel(text)
    if name:
        lab.setObjectName(name)
    lab.setWordWrap(wrap)
    return lab


# ====================================================================== settings form
class ConfigForm(QWidget):
    """A form generated from a detector's config dataclass; tooltips come from field help."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.config_class: Optional[type[DetectorConfig]] = None
        self._editors: dict[str, tuple[QWidget, type]] = {}
        self._advanced: list[str] = []
        self.form = QFormLayout()
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.advanced_check = QCheckBox("Show advanced settings")
        self.advanced_check.toggled.connect(self._show_advanced)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.form)
        lay.addWidget(self.advanced_check)

    def set_config(self, config_class: type[DetectorConfig], values: Optional[DetectorConfig] = None) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.config_class = config_class
        self._editors, self._advanced = {}, []
        cfg = values if values is not None else config_class()
        for f in dataclasses.fields(config_class):
            tp = field_type(config_class, f)
            editor = self._editor(f, tp, getattr(cfg, f.name))
            editor.setToolTip(f.metadata.get("help", ""))
            label = QLabel(f.name.replace("_", " "))
            label.setToolTip(editor.toolTip())
            self.form.addRow(label, editor)
            self._editors[f.name] = (editor, tp)
            if f.metadata.get("advanced"):
                self._advanced.append(f.name)
        self.advanced_check.setVisible(bool(self._advanced))
        self._show_advanced(self.advanced_check.isChecked())
        guard_inputs(self)

    def _editor(self, f: dataclasses.Field, tp: Any, value: Any) -> QWidget:
        md = f.metadata
        if "choices" in md:
            w = QComboBox()
            for c in md["choices"]:
                w.addItem(str(c), c)
            w.setCurrentIndex(max(0, w.findData(value)))
            w.currentIndexChanged.connect(self.changed)
        elif tp is bool:
            w = QCheckBox()
            w.setChecked(bool(value))
            w.toggled.connect(self.changed)
        elif tp in (int, float):
            w = number_editor(f, tp, value)
            w.valueChanged.connect(self.changed)
        else:  # str and anything else (tuples, optionals) as text the config parser reads
            w = QLineEdit(self._text(value))
            w.textChanged.connect(self.changed)
        return w

    @staticmethod
    def _text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value))
        return str(value)

    def values(self) -> dict[str, Any]:
        """Every setting, as the config's ``with_overrides`` accepts them."""
        out: dict[str, Any] = {}
        for name, (w, _tp) in self._editors.items():
            if isinstance(w, QComboBox):
                out[name] = w.currentData()
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
                out[name] = w.value()
            else:
                out[name] = w.text()
        return out

    def set_value(self, name: str, value: Any) -> None:
        w, _tp = self._editors[name]
        if isinstance(w, QComboBox):
            w.setCurrentIndex(max(0, w.findData(value)))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(value)
        else:
            w.setText(self._text(value))

    def _show_advanced(self, on: bool) -> None:
        for name in self._advanced:
            self.form.setRowVisible(self._editors[name][0], on)


# ====================================================================== folder
class FolderPanel(QWidget):
    open_clicked = Signal()
    patterns_changed = Signal()  # include / exclude edited and confirmed (Enter, focus out)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.path_label = _label("No folder open", "pathLabel", wrap=True)
        self.path_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.images_label = _label("–", "bigValue")
        self.skipped_label = _label("–", "bigValue")
        self.skipped_label.setToolTip("Files that could not be read; the log says why")
        self.subfolders_check = QCheckBox("Include subfolders")
        self.subfolders_check.setToolTip("Also list images in subfolders (turned on by itself when the folder "
                                         "holds only subfolders)")
        self.include_edit = QLineEdit()
        self.include_edit.setPlaceholderText("only files matching, e.g. *.png; cam1/*")
        self.include_edit.setToolTip("File-name patterns (separated by ; or ,) an image must match to be listed; "
                                     "matched against the name and the path inside the folder")
        self.exclude_edit = QLineEdit()
        self.exclude_edit.setPlaceholderText("leave out files matching, e.g. *_ref.*")
        self.exclude_edit.setToolTip("File-name patterns (separated by ; or ,) of images to leave out")
        self._patterns = ("", "")
        for edit in (self.include_edit, self.exclude_edit):
            edit.editingFinished.connect(self._patterns_edited)
        open_button = QPushButton("Open folder…")
        open_button.clicked.connect(self.open_clicked)
        grid = QGridLayout()
        grid.addWidget(_label("images", "muted"), 0, 0)
        grid.addWidget(self.images_label, 1, 0)
        grid.addWidget(_label("skipped", "muted"), 0, 1)
        grid.addWidget(self.skipped_label, 1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.addWidget(self.path_label)
        lay.addLayout(grid)
        row = QHBoxLayout()
        row.addWidget(open_button)
        row.addWidget(self.subfolders_check, 1)
        lay.addLayout(row)
        filters = QFormLayout()
        filters.addRow("include", self.include_edit)
        filters.addRow("exclude", self.exclude_edit)
        lay.addLayout(filters)
        self.setMinimumHeight(self.sizeHint().height())

    def patterns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(include, exclude) file-name patterns as typed."""
        return split_patterns(self.include_edit.text()), split_patterns(self.exclude_edit.text())

    def _patterns_edited(self) -> None:
        now = (self.include_edit.text(), self.exclude_edit.text())
        if now != self._patterns:  # editingFinished also fires on a mere focus change
            self._patterns = now
            self.patterns_changed.emit()

    def show_folder(self, folder: Path, n_images: int, recursive: bool) -> None:
        self.path_label.setText(str(folder))
        self.path_label.setToolTip(str(folder))
        self.images_label.setText(str(n_images))
        self.subfolders_check.setChecked(recursive)
        self.show_skipped(0)

    def show_skipped(self, n: int) -> None:
        self.skipped_label.setText(str(n))
        self.skipped_label.setStyleSheet(f"color: {ACCENT};" if n else "")


# ====================================================================== detector
class DetectorPanel(QWidget):
    """Detector choice, its settings, the good folder, and Train / Run / Cancel with progress."""

    detector_selected = Signal(str)
    settings_changed = Signal()
    good_folder_changed = Signal(str)  # confirmed (Enter, focus out)
    good_folder_edited = Signal(str)  # every change of the text: what is shown is what is used
    browse_good_clicked = Signal()
    train_clicked = Signal()
    run_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, cuda_available: bool = False, parent=None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        for name in detector_names():
            cls = REGISTRY[name]
            ok, reason = cls.availability()
            self.combo.addItem(name, name)
            i = self.combo.count() - 1
            self.combo.setItemData(i, f"{cls.title}: {cls.summary}" if ok else f"unavailable: {reason}",
                                   Qt.ToolTipRole)
            if not ok:
                self.combo.model().item(i).setEnabled(False)
        self.summary = _label("", "muted", wrap=True)
        self.form = ConfigForm()
        self.form.changed.connect(self.settings_changed)

        self.good_edit = QLineEdit()
        self.good_edit.setPlaceholderText("folder of good (defect-free) parts")
        self.good_edit.setToolTip("Trained detectors learn what normal looks like from these images; 10 % "
                                  "(at least 3) are held out to calibrate the threshold.")
        self.good_edit.editingFinished.connect(lambda: self.good_folder_changed.emit(self.good_edit.text().strip()))
        self.good_edit.textChanged.connect(lambda text: self.good_folder_edited.emit(text.strip()))
        self._good_tip = self.good_edit.toolTip()
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the folder of good images")
        browse.clicked.connect(self.browse_good_clicked)
        self.good_row = QWidget()
        g = QHBoxLayout(self.good_row)
        g.setContentsMargins(0, 0, 0, 0)
        g.addWidget(self.good_edit, 1)
        g.addWidget(browse)
        self.fpr_spin = QDoubleSpinBox()
        self.fpr_spin.setDecimals(4)
        self.fpr_spin.setRange(0.0, 0.5)
        self.fpr_spin.setSingleStep(0.005)
        self.fpr_spin.setValue(DEFAULT_FPR)
        self.fpr_spin.setKeyboardTracking(False)  # applies on Enter / focus-out, not on every keystroke
        self.fpr_spin.setToolTip("Target false-positive rate on held-out good images; sets the threshold")
        self.device_combo = QComboBox()
        for d in DEVICE_CHOICES:
            self.device_combo.addItem(d, d)
        if not cuda_available:
            self.device_combo.model().item(DEVICE_CHOICES.index("cuda")).setEnabled(False)
        self.device_combo.setToolTip("auto takes the GPU when there is one")

        common = QFormLayout()
        common.setContentsMargins(0, 0, 0, 0)
        common.addRow("good images", self.good_row)
        common.addRow("target FPR", self.fpr_spin)
        common.addRow("device", self.device_combo)
        self.good_label = common.labelForField(self.good_row)
        self.fpr_label = common.labelForField(self.fpr_spin)
        self._busy = False
        self._kept: dict[str, dict[str, Any]] = {}  # each detector's settings, kept when switching away
        self._shown: Optional[str] = None
        self._allowed = (True, True)  # Train, Run (by what the settings and the good folder allow)
        self._progress_message = ""

        self.model_label = _label("No model trained", "modelState", wrap=True)
        self.support_label = _label("", "supportWarning", wrap=True)  # the calibration's caveat, beside it
        self.support_label.setStyleSheet("color:#f0b429;")
        self.support_label.hide()
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train on the good images (Ctrl+T)")
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("primary")
        self.run_button.setToolTip("Score the open folder; trains first when needed (Ctrl+R)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running task (Esc)")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(self.train_clicked)
        self.run_button.clicked.connect(self.run_clicked)
        self.cancel_button.clicked.connect(self.cancel_clicked)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress_label = _label("idle", "muted")

        buttons = QHBoxLayout()
        for b in (self.train_button, self.run_button, self.cancel_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.addWidget(self.combo)
        lay.addWidget(self.summary)
        lay.addWidget(_label("Settings", "sectionTitle"))
        lay.addWidget(self.form)
        lay.addWidget(_label("Training and threshold", "sectionTitle"))
        lay.addLayout(common)
        lay.addWidget(self.model_label)
        lay.addWidget(self.support_label)
        lay.addStretch(1)
        # Train / Run / Cancel and the progress: a block of their own that the window keeps in view
        # under the (scrolling) settings, at any window size.
        self.controls = QWidget()
        self.controls.setObjectName("detectorControls")
        low = QVBoxLayout(self.controls)
        low.setContentsMargins(8, 4, 8, 8)
        low.addLayout(buttons)
        low.addWidget(self.progress)
        low.addWidget(self.progress_label)
        self.combo.setCurrentIndex(max(0, self.combo.findData(default_detector())))
        self.combo.currentIndexChanged.connect(self._combo_changed)
        self._combo_changed()

    # -- reading
    def current_name(self) -> str:
        return self.combo.currentData()

    def overrides(self) -> dict[str, Any]:
        return self.form.values()

    def fpr(self) -> float:
        return float(self.fpr_spin.value())

    def device(self) -> str:
        return self.device_combo.currentData()

    # -- writing
    def select_detector(self, name: str, config: Optional[DetectorConfig] = None) -> None:
        i = self.combo.findData(name)
        if i >= 0:
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(i)
            self.combo.blockSignals(False)
            self._show_detector(name, config)

    def set_good_folder(self, folder: str) -> None:
        self.good_edit.setText(folder)

    def _combo_changed(self) -> None:
        self._show_detector(self.current_name())
        self.detector_selected.emit(self.current_name())

    def kept_settings(self) -> dict[str, dict[str, Any]]:
        """Every detector's settings as last shown (the current one's as they are now)."""
        if self._shown is not None:
            self._kept[self._shown] = self.form.values()
        return {k: dict(v) for k, v in self._kept.items()}

    def restore_settings(self, kept: dict[str, dict[str, Any]]) -> None:
        """Settings per detector (e.g. from the last session); the current form follows."""
        self._kept = {k: dict(v) for k, v in kept.items() if k in REGISTRY and isinstance(v, dict)}
        if self._shown is not None:
            self._apply_kept(self._shown)
            self.settings_changed.emit()

    def _apply_kept(self, name: str) -> None:
        for key, value in self._kept.get(name, {}).items():
            try:
                self.form.set_value(key, value)
            except (KeyError, TypeError, ValueError):
                pass  # a setting this version no longer has, or of another type: the default stays

    def _show_detector(self, name: str, config: Optional[DetectorConfig] = None) -> None:
        cls = REGISTRY[name]
        self.summary.setText(cls.summary)
        if self._shown is not None and self.form.config_class is not None:
            self._kept[self._shown] = self.form.values()
        self.form.set_config(cls.config_class, config)
        self._shown = name
        if config is None:
            self._apply_kept(name)
        trained = not cls.zero_shot
        for w in (self.good_row, self.good_label, self.fpr_spin, self.fpr_label, self.train_button):
            if w is not None:
                w.setVisible(trained)
        self.settings_changed.emit()

    def set_model_state(self, text: str, stale: bool = False, details: str = "") -> None:
        self.model_label.setText(text)
        self.model_label.setToolTip(details or text)
        self.model_label.setProperty("stale", stale)
        self.model_label.setStyleSheet(f"color: {ACCENT};" if stale else "")

    def set_support_warning(self, short: str, full: str = "") -> None:
        """What the calibration rests on, when it is too little for the target FPR (``short`` in view,
        ``full`` in the tooltip; "" hides it)."""
        self.support_label.setText(f"⚠ {short}" if short else "")
        self.support_label.setToolTip(full)
        self.support_label.setVisible(bool(short))

    def set_good_state(self, problem: str) -> None:
        """Mark the good-folder field as unusable (``problem`` says why) or usable ("")."""
        self.good_edit.setProperty("invalid", bool(problem))
        self.good_edit.setStyleSheet(f"border: 1px solid {ACCENT};" if problem else "")
        self.good_edit.setToolTip(f"{problem}\n\n{self._good_tip}" if problem else self._good_tip)

    def set_allowed(self, train: bool, run: bool) -> None:
        """Whether Train and Run can start now (apart from a running task)."""
        self._allowed = (train, run)
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        busy = self._busy
        self.cancel_button.setEnabled(busy)
        self.train_button.setEnabled(not busy and self._allowed[0])
        self.run_button.setEnabled(not busy and self._allowed[1])
        self.combo.setEnabled(not busy)

    def set_busy(self, title: str) -> None:
        self._busy = bool(title)
        self._sync_buttons()
        self.progress.setRange(0, 0 if self._busy else 1)  # indeterminate until the first report
        self.progress.setValue(0)
        self._progress_message = ""
        self.progress_label.setText(title or "idle")

    def set_progress(self, done: int, total: int, message: str) -> None:
        """The bar shows the whole task; the label gives the same fraction, then the message of
        the stage under way (which may count something else, e.g. "scored 32 of 83" while
        the batch model's training has already filled most of the bar)."""
        if message:
            self._progress_message = message
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            pct = int(100 * min(done, total) / total)
            self.progress_label.setText(f"{pct} % · {self._progress_message}" if self._progress_message
                                        else f"{pct} %")
        elif message:
            self.progress_label.setText(message)


# ====================================================================== log
class LogPanel(QWidget):
    """Messages with time and level; warnings and errors stand out."""

    COLORS = {"info": "#c8cbd0", "warning": "#f0b429", "error": ACCENT}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumBlockCount(MAX_LOG_LINES)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.lines: list[tuple[str, str]] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.text)

    def add(self, level: str, message: str) -> None:
        self.lines.append((level, message))
        del self.lines[:-MAX_LOG_LINES]
        color = self.COLORS.get(level, self.COLORS["info"])
        tag = "" if level == "info" else f"{level.upper()}: "
        self.text.appendHtml(f'<span style="color:#7d828a">{time.strftime("%H:%M:%S")}</span> '
                             f'<span style="color:{color}">{html.escape(tag + message)}</span>')
