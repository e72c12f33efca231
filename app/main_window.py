"""The inspector's window: menus, docks, and the wiring from the controller to the views."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.controller import EXPORT_KINDS, Controller, FolderInfo
from app.curves_dialog import CurvesDialog
from app.gallery import GalleryPanel
from app.grouping import GroupingPanel
from app.histogram import HistogramPanel
from app.image_view import ImageView
from app.panels import DetectorPanel, FolderPanel, LogPanel
from app.review_panel import NEXT_KEY, NOTE_KEY, VERDICT_KEYS, ReviewPanel
from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.registry import REGISTRY, make_config
from core.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from core.results import ScanResult
from core.runtime.device import resolve_device

APP_NAME = "Anomaly Inspector"
MAX_RECENT = 8
STATE_VERSION = 1
ROWS_REFRESH_MS = 250  # the gallery and histogram follow a running scan at about 4 updates a second
SELECTION_SAVE_MS = 600  # the selection is kept in the session once it has rested this long

#: Every key of the window, for Help > Keyboard shortcuts (the menus show the same keys).
SHORTCUTS = [
    ("Arrows, PageUp / PageDown, Home / End", "move through the gallery"),
    (VERDICT_KEYS["ok"], "verdict OK (the part is good)"),
    (VERDICT_KEYS["ng"], "verdict NG (the part is defective)"),
    (VERDICT_KEYS["unsure"], "verdict unsure"),
    (VERDICT_KEYS[None], "clear the verdict"),
    (NOTE_KEY, "write a note on the image"),
    (NEXT_KEY, "'to review' filter: unreviewed images in the review band or flagged"),
    ("F", "flagged images only"),
    ("S / N", "sort by score / by name"),
    ("H / G", "heat map / ground-truth outline"),
    ("+ / - / 0 / 1", "zoom in / out, fit, 1:1"),
    ("Ctrl+R or F5 / Ctrl+T", "run / train the detector"),
    ("Esc", "cancel the running task (asks first)"),
]


def default_settings() -> QSettings:
    return QSettings("AnomalyInspector", APP_NAME)


class MainWindow(QMainWindow):
    """``settings`` and ``controller`` may be injected (tests use a temporary settings file)."""

    #: Closing while a task runs asks first and then lets it wind down with the window still
    #: drawing; False cancels and waits at once (tests that close a busy window use it).
    confirm_close_when_busy = True
    #: Opening another folder or closing with results no session keeps asks first (tests of other
    #: rooms switch it off; the prompt itself is tested with it on).
    ask_before_discarding = True

    def __init__(self, settings: Optional[QSettings] = None, controller: Optional[Controller] = None,
                 cuda_available: Optional[bool] = None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self._shutdown_timer: Optional[QTimer] = None
        self._shutdown_done = False
        self.settings = settings if settings is not None else default_settings()
        self.controller = controller if controller is not None else Controller(parent=self)
        if cuda_available is None:
            cuda_available = resolve_device("auto").type == "cuda"
        self.setWindowTitle(APP_NAME)
        self.resize(1600, 1000)
        self.setDockNestingEnabled(True)

        self.gallery = GalleryPanel()
        self.image_view = ImageView()
        self.histogram = HistogramPanel()
        self.grouping = GroupingPanel()
        self.folder_panel = FolderPanel()
        self.detector_panel = DetectorPanel(cuda_available=cuda_available)
        self.log_panel = LogPanel()
        self._pending_rows: list = []
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(ROWS_REFRESH_MS)
        self._flush_timer.timeout.connect(self._flush_rows)

        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setObjectName("centralSplitter")
        self.splitter.addWidget(self.gallery)
        self.review = ReviewPanel()
        viewer = QWidget()
        vlay = QVBoxLayout(viewer)
        vlay.setContentsMargins(0, 0, 0, 0)
        vlay.setSpacing(0)
        vlay.addWidget(self.image_view, 1)
        vlay.addWidget(self.review)
        self.splitter.addWidget(viewer)
        self._selection_timer = QTimer(self)
        self._selection_timer.setSingleShot(True)
        self._selection_timer.setInterval(SELECTION_SAVE_MS)
        self._selection_timer.timeout.connect(self._remember_selection)
        self._restoring: dict = {}
        self._curves: Optional[CurvesDialog] = None
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([380, 560])
        self.setCentralWidget(self.splitter)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.detector_panel)
        scroll.setFrameShape(QScrollArea.NoFrame)
        self.docks = {
            "folder": self._dock("Folder", self.folder_panel, Qt.LeftDockWidgetArea),
            "detector": self._dock("Detector", scroll, Qt.LeftDockWidgetArea),
            "histogram": self._dock("Score histogram", self.histogram, Qt.RightDockWidgetArea),
            "grouping": self._dock("Grouping (zero-shot)", self.grouping, Qt.RightDockWidgetArea),
            "log": self._dock("Log", self.log_panel, Qt.BottomDockWidgetArea),
        }
        self.resizeDocks([self.docks["folder"], self.docks["histogram"]], [330, 420], Qt.Horizontal)
        self.resizeDocks([self.docks["folder"], self.docks["detector"]], [150, 700], Qt.Vertical)
        self.resizeDocks([self.docks["log"]], [150], Qt.Vertical)
        self.resizeDocks([self.docks["histogram"], self.docks["grouping"]], [420, 420], Qt.Vertical)

        self.device_label = QLabel("device: …")
        self.device_label.setObjectName("deviceLabel")
        self.menuBar().setCornerWidget(self.device_label, Qt.TopRightCorner)
        self._build_menus()
        self._wire()
        self._default_state = self.saveState(STATE_VERSION)
        self._restore_settings()
        self._update_model_state()
        self.controller.describe_device()
        self.statusBar().showMessage("Open a folder of part images to start (File > Open folder…)")

    # ================================================================== construction
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{title.lower().replace(' ', '_')}")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetClosable
                         | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, menu, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut:
            act.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
            act.setShortcutContext(Qt.WindowShortcut)
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        act.triggered.connect(lambda _checked=False: slot())
        menu.addAction(act)
        self.addAction(act)  # shortcuts work while the menu bar is hidden too
        return act

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        self._action(m, "&Open folder…", self.open_folder, QKeySequence.Open, "Open a folder of images to inspect")
        self.recent_menu = m.addMenu("Open &recent")
        self._action(m, "Open s&ession file…", self.open_session_file, tip="Open a session (.db), e.g. one "
                     "written by 'scan --session' on a server, with its folder")
        self.reopen_action = self._action(m, "Reopen &last session", self.reopen_last_session)
        self.save_session_action = self._action(m, "Save session &as…", self.save_session_as, "Ctrl+Shift+S",
                                                "Copy the session (results and decisions) to a file and go on there")
        m.addSeparator()
        self._action(m, "Open &model…", self.open_model, "Ctrl+Shift+O", "Load a saved detector")
        self.save_model_action = self._action(m, "&Save model…", self.save_model, QKeySequence.Save,
                                              "Save the trained detector to a folder")
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.Quit)

        m = mb.addMenu("&View")
        for dock in self.docks.values():
            m.addAction(dock.toggleViewAction())
        m.addSeparator()
        self._action(m, "Toggle &heat map", self.image_view.toggle_heat, "H")
        self._action(m, "Toggle &ground-truth outline", self.image_view.toggle_outline, "G")
        self._action(m, "Zoom &in", lambda: self.image_view.zoom(1.25), [QKeySequence("+"), QKeySequence("=")])
        self._action(m, "Zoom &out", lambda: self.image_view.zoom(1 / 1.25), "-")
        self._action(m, "&Fit image", self.image_view.fit, "0")
        self._action(m, "&Actual size (1:1)", self.image_view.actual_size, "1")
        m.addSeparator()
        self._action(m, "&Flagged only", self.gallery.toggle_flagged_only, "F", "Show only flagged images")
        self._action(m, "Sort by &score", lambda: self.gallery.set_sort_by_score(True), "S")
        self._action(m, "Sort by &name", lambda: self.gallery.set_sort_by_score(False), "N")
        m.addSeparator()
        self._action(m, "&Reset layout", lambda: self.restoreState(self._default_state, STATE_VERSION))

        m = mb.addMenu("&Review")
        self.review_actions = [
            self._action(m, "Verdict &OK", lambda: self.set_verdict("ok"), VERDICT_KEYS["ok"]),
            self._action(m, "Verdict &NG", lambda: self.set_verdict("ng"), VERDICT_KEYS["ng"]),
            self._action(m, "Verdict &unsure", lambda: self.set_verdict("unsure"), VERDICT_KEYS["unsure"]),
            self._action(m, "&Clear verdict", lambda: self.set_verdict(None), VERDICT_KEYS[None]),
        ]
        self._action(m, "&Note…", lambda: self.review.note.setFocus(), NOTE_KEY)
        m.addSeparator()
        self._action(m, "&To review", self.toggle_to_review, NEXT_KEY,
                     "Only the unreviewed images in the review band or flagged, highest score first")
        self._action(m, "This one is &normal", self.mark_normal)

        m = mb.addMenu("&Detector")
        self.detector_group = QActionGroup(self)
        for name in REGISTRY:
            act = QAction(f"{name} — {REGISTRY[name].title}", self, checkable=True)
            act.setData(name)
            act.setEnabled(REGISTRY[name].availability()[0])
            act.triggered.connect(lambda _c=False, n=name: self.detector_panel.select_detector(n))
            self.detector_group.addAction(act)
            m.addAction(act)
        m.addSeparator()
        self._action(m, "&Train", self.train, "Ctrl+T", "Train the detector on the good images")
        self._action(m, "&Run", self.run_detector, ["Ctrl+R", "F5"], "Score the open folder")
        self.cancel_action = self._action(m, "&Cancel", self.request_cancel, "Esc", "Stop the running task")
        m.addSeparator()
        self._action(m, "Reset &threshold", self.controller.reset_threshold)

        m = mb.addMenu("&Export")
        self.export_actions = {
            "flagged": self._action(m, "&Flagged list…", lambda: self.export("flagged"),
                                    tip="flagged.txt and flagged.csv (path, score)"),
            "heatmaps": self._action(m, "&Heat maps…", lambda: self.export("heatmaps"),
                                     tip="one PNG per image in the shared colormap"),
            "results": self._action(m, "Full &results…", lambda: self.export("results"),
                                    tip="results.csv, flagged.txt, skipped.csv and heat maps"),
        }
        self.report_action = self._action(m, "&Report (HTML)…", self.export_report,
                                          tip="One self-contained HTML file: counts, histogram, ROC of the "
                                              "verdicts, flagged and disagreeing images with notes")
        m.addSeparator()
        self.open_export_action = self._action(m, "&Open last export folder", self.open_export_folder)
        self.open_export_action.setEnabled(False)

        m = mb.addMenu("&Help")
        self._action(m, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._action(m, "&About", self.about)
        self._sync_actions()

    def _wire(self) -> None:
        c = self.controller
        c.folder_opened.connect(self._folder_opened)
        c.thumbnails_arrived.connect(self.gallery.add_thumbnails)
        c.skipped_changed.connect(self.folder_panel.show_skipped)
        c.detector_changed.connect(self._detector_changed)
        c.scan_started.connect(self._scan_started)
        c.rows_arrived.connect(self._rows_arrived)
        c.result_changed.connect(self._result_changed)
        c.threshold_changed.connect(self._threshold_changed)
        c.map_range_changed.connect(self.image_view.set_map_range)
        c.heat_scale_changed.connect(self.image_view.set_heat_scale)
        c.busy_changed.connect(self._busy_changed)
        c.progressed.connect(self.detector_panel.set_progress)
        c.logged.connect(self._logged)
        c.exported.connect(self._exported)
        c.image_loaded.connect(self.image_view.set_image)
        c.image_failed.connect(self.image_view.set_failed)
        c.outline_loaded.connect(self.image_view.set_outline)
        c.device_described.connect(self._device_described)
        c.grouping_changed.connect(self._grouping_changed)
        c.stale_changed.connect(self._stale_changed)
        c.session_changed.connect(self._session_changed)
        c.session_restored.connect(self._session_restored)
        c.review_changed.connect(self._review_changed)
        c.maps_restored.connect(self._refresh_current)
        self.review.verdict_requested.connect(self.set_verdict)
        self.review.note_edited.connect(self._note_edited)
        self.review.normal_requested.connect(self.mark_normal)
        self.review.band_requested.connect(c.set_review_band)
        self.histogram.band_moved.connect(c.set_review_band)
        self.histogram.curves_requested.connect(self.show_curves)
        self.gallery.review_filter_toggled.connect(self._review_filter_toggled)
        self.gallery.sort_changed.connect(lambda on: c.remember("sort", "score" if on else "name"))
        self.gallery.flagged_check.toggled.connect(lambda on: c.remember("flagged_only", on))

        self.gallery.current_changed.connect(self._current_changed)
        self.gallery.current_changed.connect(self.grouping.set_current)
        self.gallery.move_requested.connect(lambda path, group: c.move_to_group(path, group))
        self.grouping.move_requested.connect(lambda path: c.move_to_group(path))
        self.grouping.method_changed.connect(c.regroup)
        self.grouping.image_clicked.connect(self.gallery.select_path)
        self.histogram.threshold_moved.connect(c.set_threshold)
        self.histogram.reset_requested.connect(c.reset_threshold)
        self.folder_panel.open_clicked.connect(self.open_folder)
        self.folder_panel.subfolders_check.clicked.connect(self._subfolders_clicked)
        self.folder_panel.patterns_changed.connect(self._patterns_changed)
        p = self.detector_panel
        p.train_clicked.connect(self.train)
        p.run_clicked.connect(self.run_detector)
        p.cancel_clicked.connect(lambda: c.cancel())
        p.good_folder_changed.connect(self.set_good_folder)
        p.good_folder_edited.connect(self._good_folder_edited)
        p.browse_good_clicked.connect(self._browse_good)
        p.settings_changed.connect(self._update_model_state)
        p.fpr_spin.valueChanged.connect(self._fpr_changed)
        p.detector_selected.connect(self._detector_selected)

    # ================================================================== settings
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        state = s.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state, STATE_VERSION)
        good = s.value("good_folder", "", type=str)
        if good and Path(good).is_dir():
            self.set_good_folder(good)
        try:
            kept = json.loads(s.value("detector/settings", "{}", type=str) or "{}")
        except ValueError:
            kept = {}
        self.detector_panel.restore_settings(kept if isinstance(kept, dict) else {})
        name = s.value("detector/current", "", type=str)
        if name in REGISTRY and REGISTRY[name].availability()[0] and name != self.detector_panel.current_name():
            self.detector_panel.select_detector(name)
        thumb = s.value("gallery/thumb_size", 0, type=int)
        if thumb:
            self.gallery.set_thumb_size(thumb)
        self._rebuild_recent()

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState(STATE_VERSION))
        s.setValue("good_folder", str(self.controller.good_folder or ""))
        s.setValue("detector/settings", json.dumps(self.detector_panel.kept_settings()))
        s.setValue("detector/current", self.detector_panel.current_name())
        s.setValue("gallery/thumb_size", self.gallery.thumb_size())
        s.sync()

    def recent_folders(self) -> list[str]:
        value = self.settings.value("recent_folders", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember_folder(self, folder: Path) -> None:
        items = [str(folder)] + [f for f in self.recent_folders() if f != str(folder)]
        self.settings.setValue("recent_folders", items[:MAX_RECENT])
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        folders = self.recent_folders()
        for f in folders:
            act = self.recent_menu.addAction(f)
            act.triggered.connect(lambda _c=False, f=f: self.open_folder(f))
        self.recent_menu.setEnabled(bool(folders))

    # ================================================================== user commands
    def open_folder(self, folder: Optional[str] = None, recursive: Optional[bool] = None) -> None:
        if folder is None:
            start = self.recent_folders()[0] if self.recent_folders() else str(Path.home())
            folder = QFileDialog.getExistingDirectory(self, "Open a folder of images", start)
            if not folder:
                return
        if not self.confirm_discard(f"Open {folder}"):
            return
        include, exclude = self.folder_panel.patterns()
        self.controller.open_folder(folder, recursive, include, exclude)

    def confirm_discard(self, action: str) -> bool:
        """Whether work that is not kept in a session may be dropped for ``action``: asks when
        there is some (never silently), True when there is none."""
        what = self.controller.unsaved()
        if not what or not self.ask_before_discarding:
            return True
        answer = QMessageBox.question(self, "Discard unsaved work?",
                                      f"{action}: {what} would be lost.\n\nDiscard them?",
                                      QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Cancel)
        return answer == QMessageBox.Discard

    def _subfolders_clicked(self, on: bool) -> None:
        if self.controller.folder is not None:
            self.controller.open_folder(self.controller.folder.folder, on, *self.folder_panel.patterns())

    def _patterns_changed(self) -> None:
        """The include / exclude patterns changed: list the open folder again with them."""
        info = self.controller.folder
        if info is not None and self.confirm_discard(f"List {info.folder} again"):
            self.controller.open_folder(info.folder, info.recursive, *self.folder_panel.patterns())

    def set_good_folder(self, folder: Optional[str]) -> None:
        """Use ``folder`` for training and show it; one that cannot be used is shown as such and
        blocks Train (and Run when Run would train) until it is corrected."""
        folder = (folder or "").strip()
        if self.detector_panel.good_edit.text().strip() != folder:
            self.detector_panel.set_good_folder(folder)  # -> _good_folder_edited
        self._good_folder_edited(folder)
        problem = self.controller.good_folder_problem() if folder else ""
        if problem:
            self.controller.log("error", f"{problem[0].upper()}{problem[1:]}: Train is blocked until it is corrected")

    def _good_folder_edited(self, folder: str) -> None:
        self.controller.set_good_folder(folder or None)
        self._update_model_state()

    def _browse_good(self) -> None:
        start = str(self.controller.good_folder or (self.controller.folder.folder if self.controller.folder else ""))
        folder = QFileDialog.getExistingDirectory(self, "Folder of good (defect-free) images", start)
        if folder:
            self.set_good_folder(folder)

    def select_detector(self, name: str) -> None:
        self.detector_panel.select_detector(name)

    def train(self) -> bool:
        p = self.detector_panel
        return self.controller.train(p.current_name(), p.overrides(), p.fpr(), p.device())

    def run_detector(self) -> bool:
        p = self.detector_panel
        return self.controller.run(p.current_name(), p.overrides(), p.fpr(), p.device())

    def request_cancel(self, confirm: Optional[bool] = None) -> bool:
        """Esc: cancel the running task after confirmation (``confirm`` answers it in advance).

        The task keeps running while the question is open; if it has ended by the time the
        answer comes, nothing is cancelled and the window says so."""
        c = self.controller
        if not c.busy:
            return False
        operation, title = c.operation, c.busy_title
        if confirm is None:
            answer = QMessageBox.question(self, "Cancel", f"Stop '{title}'?\n\nIt keeps running while this "
                                          "question is open.", QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            confirm = answer == QMessageBox.Yes
        if not confirm:
            return False
        if c.busy and c.operation == operation:  # the same command (a scan after its training included)
            return c.cancel()
        c.log("info", f"'{title}' finished before the cancel was confirmed; nothing was cancelled.")
        return False

    def _ask_overwrite(self, what: str, folder: Path, existing: list[Path]) -> bool:
        names = "\n".join(f"  {p.relative_to(folder) if p.is_relative_to(folder) else p}" for p in existing[:6])
        more = f"\n  … and {len(existing) - 6} more" if len(existing) > 6 else ""
        answer = QMessageBox.question(self, "Replace files?",
                                      f"Writing {what} to {folder} would replace {len(existing)} file(s):\n"
                                      f"{names}{more}\n\nReplace them?",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def export(self, kind: str, out_dir: Optional[str] = None, overwrite: Optional[bool] = None) -> bool:
        """Export ``kind`` of the complete scan; existing files are only replaced after asking
        (``overwrite`` answers the question in advance)."""
        c = self.controller
        if c.result is None:
            c.log("error", "Nothing to export: run a complete scan first.")
            return False
        if out_dir is None:  # the last export folder (this session or an earlier one), never the data folder
            last = c.last_export_dir or self.settings.value("export/last_dir", "", type=str)
            start = str(last) if last and Path(last).is_dir() else str(Path.home())
            out_dir = QFileDialog.getExistingDirectory(self, f"Export {EXPORT_KINDS[kind]} to folder", start)
            if not out_dir:
                return False
        out = Path(out_dir)
        existing = c.export_targets(kind, out)
        if existing:
            if overwrite is None:
                overwrite = self._ask_overwrite(EXPORT_KINDS[kind], out, existing)
            if not overwrite:
                c.log("info", f"Export of {EXPORT_KINDS[kind]} not written: {out} already holds them.")
                return False
        return c.export(kind, out)

    def save_model(self, folder: Optional[str] = None, overwrite: Optional[bool] = None,
                   store_hand_threshold: Optional[bool] = None) -> bool:
        """Save the model; with a threshold set by hand in force, asks whether to store it with
        the model (``store_hand_threshold`` answers in advance)."""
        c = self.controller
        if c.detector is None:
            c.log("error", "No trained model to save: train one or open a saved model first.")
            return False
        hand, own = c.threshold_override, c.detector.threshold
        if hand is not None and store_hand_threshold is None:
            answer = QMessageBox.question(
                self, "Save the hand-set threshold?",
                f"The threshold in force, {hand.value:.6g}, was set by hand. The model's own threshold is "
                f"{own.describe() if own else 'none'}.\n\nYes: save {hand.value:.6g} with the model (it is recorded "
                "as set by hand).\nNo: save the model with its own threshold.",
                QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
            store_hand_threshold = answer == QMessageBox.Yes
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save the model into folder", str(Path.home()))
            if not folder:
                return False
        existing = [p for p in (Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME) if p.exists()]
        if existing:
            if overwrite is None:
                overwrite = self._ask_overwrite("the model", Path(folder), existing)
            if not overwrite:
                c.log("info", f"Model not saved: {folder} already holds a model.")
                return False
        return c.save_model(folder, store_hand_threshold=bool(store_hand_threshold))

    def open_model(self, folder: Optional[str] = None) -> bool:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a saved model folder", str(Path.home()))
            if not folder:
                return False
        return self.controller.open_model(folder, self.detector_panel.device())

    def open_export_folder(self) -> None:
        if self.controller.last_export_dir is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.controller.last_export_dir)))

    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b><p>Open a folder of part images, train or choose a detector, "
                          "and inspect anomaly heat maps, the score histogram and the flagged parts.</p>"
                          "<p>Keys: arrows / PageUp / PageDown move through the gallery; H toggles the heat "
                          "map, G the ground-truth outline; + / - zoom, 0 fits, 1 shows 1:1; F shows only flagged images; S / N sort by score / name; "
                          "Esc cancels the running task; A / D / U / C give the verdict OK / NG / unsure / none. "
                          "Help > Keyboard shortcuts (F1) lists every key.</p>")

    # ================================================================== controller -> views
    def _folder_opened(self, info: FolderInfo) -> None:
        self.folder_panel.show_folder(info.folder, len(info.paths), info.recursive)
        self.setWindowTitle(f"{APP_NAME} — {info.folder}")
        self.histogram.clear()
        self.image_view.clear()
        self.gallery.set_paths(info.paths, info.folder)
        self.image_view.name_root = info.folder
        self._remember_folder(info.folder)
        self.gallery.view.setFocus()
        self._sync_actions()

    def _current_changed(self, path: Optional[Path]) -> None:
        c = self.controller
        self.review.show_image(path, c.verdict(path) if path else None, c.note(path) if path else "")
        if path is not None and not self._restoring:
            self._selection_timer.start()
        if path is None:
            self.image_view.clear()
            return
        if self.image_view.show_row(path, c.row_for(path), c.threshold, c.detector_name):
            c.load_image(path)

    def _refresh_current(self) -> None:
        c, path = self.controller, self.gallery.current_path()
        if path is not None:
            self.image_view.show_row(path, c.row_for(path), c.threshold, c.detector_name)

    def _scan_started(self, n: int) -> None:
        self._drop_pending_rows()
        c = self.controller
        self.gallery.set_context(c.detector_name, c.threshold)
        self.gallery.clear_scores()
        self.histogram.set_scores([], c.threshold, c.detector_name)
        self._refresh_current()
        self.statusBar().showMessage(f"Scoring {n} images…")

    def _rows_arrived(self, rows: list) -> None:
        """Rows of the running scan, shown a few times a second (not per delivery)."""
        self._pending_rows.extend(rows)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush_rows(self) -> None:
        rows, self._pending_rows = self._pending_rows, []
        if not rows or not self.controller.scanning:
            return
        c = self.controller
        self.gallery.add_rows(rows)
        self.histogram.set_scores([r.score for r in c.rows()], c.threshold, c.detector_name)
        current = self.gallery.current_path()
        if current is not None and str(current) in {str(r.path) for r in rows}:
            self._refresh_current()

    def _drop_pending_rows(self) -> None:
        self._flush_timer.stop()
        self._pending_rows = []

    def _result_changed(self, result: Optional[ScanResult]) -> None:
        self._drop_pending_rows()
        c = self.controller
        self.histogram.source = c.threshold_source
        self.image_view.source = c.threshold_source
        rows = result.rows if result is not None else []
        self.gallery.show_result(rows, c.detector_name, c.threshold)
        grouped = result is not None and result.grouping is not None
        self.histogram.set_scores([r.score for r in rows], c.threshold, c.detector_name,
                                  suspect=[bool(r.flagged) for r in rows] if grouped else None)
        self.grouping.set_result(result)
        self.grouping.set_current(self.gallery.current_path())
        if result is not None and result.grouping is not None:
            self.docks["grouping"].show()
            self.docks["grouping"].raise_()
        self._refresh_current()
        self._review_changed()
        self._sync_actions()

    def _grouping_changed(self, result: ScanResult) -> None:
        """Groups edited (moved image, other method): flags, gallery, plot and view follow."""
        c = self.controller
        self.gallery.refresh_flags(result.rows, c.threshold)
        self.histogram.set_scores([r.score for r in result.rows], c.threshold, c.detector_name,
                                  suspect=[bool(r.flagged) for r in result.rows])
        self.grouping.set_result(result)
        self._refresh_current()

    def _threshold_changed(self, threshold) -> None:
        c = self.controller
        self.gallery.refresh_flags(c.rows(), threshold)
        self.histogram.source = c.threshold_source
        self.histogram.set_threshold(threshold)
        self.image_view.update_flags(threshold, c.threshold_source)
        self._update_model_state()

    def _stale_changed(self, text: str) -> None:
        """Results of a previous run stay visible, greyed and labelled, until the new ones arrive."""
        shown = text if self.controller.result is not None else ""  # a scan's own live rows are current
        self.gallery.set_stale(shown)
        self.histogram.set_stale(shown)
        self.image_view.set_stale(shown)
        self.grouping.set_stale(text)

    def _detector_changed(self, det: Optional[Detector]) -> None:
        p = self.detector_panel
        if det is not None and (det.name != p.current_name() or not self.controller.detector_matches(det.name,
                                                                                                   p.overrides())):
            p.select_detector(det.name, det.config)
        if det is not None and det.threshold is not None and det.threshold.method == "calibrated":
            p.fpr_spin.setValue(det.threshold.fpr)
        self._update_model_state()
        self._sync_actions()

    def _fpr_changed(self, fpr: float) -> None:
        """A new target FPR re-calibrates the model in memory on its held-out scores (when it is
        the one the panel shows) instead of asking for a retrain."""
        c, p = self.controller, self.detector_panel
        if c.detector is not None and c.detector_matches(p.current_name(), p.overrides()):
            c.recalibrate(fpr)
        self._update_model_state()

    def _detector_selected(self, name: str) -> None:
        for act in self.detector_group.actions():
            act.setChecked(act.data() == name)
        self._update_model_state()

    def _update_model_state(self) -> None:
        c, p = self.controller, self.detector_panel
        name = p.current_name()
        det = c.detector
        zero_shot = REGISTRY[name].zero_shot
        matches = det is not None and c.detector_matches(name, p.overrides(), p.fpr())
        problem = "" if zero_shot or c.good_folder is None else c.good_folder_problem()
        if zero_shot:
            text = "Zero-shot: needs no good images; press Run."
            if det is not None and not matches:
                text += f" (The {det.name} model stays in memory until then.)"
            p.set_model_state(text)
        elif matches:
            thr = c.threshold
            n = det.meta.get("n_train")
            p.set_model_state(f"Model: {det.name}" + (f", trained on {n} images" if n else "")
                              + (f"; threshold {thr.value:.4g} ({c.threshold_source})" if thr else "; no threshold"))
        elif det is not None:
            p.set_model_state(f"Model in memory: {det.name} with other settings or target FPR. "
                              + (f"Run would train a new one, but the {problem}." if problem
                                 else "Run trains a new one."), stale=True)
        else:
            p.set_model_state("No model yet: choose the good images and press Train or Run "
                              "(or File > Open model…)." if not problem else f"No model yet, and the {problem}.")
        p.set_good_state(problem)
        p.set_allowed(train=not problem, run=zero_shot or matches or not problem)
        for act in self.detector_group.actions():
            act.setChecked(act.data() == name)

    def _busy_changed(self, title: str) -> None:
        self.detector_panel.set_busy(title)
        if title:
            self.statusBar().showMessage(f"{title}…")
        self._sync_actions()

    def _sync_actions(self) -> None:
        c = self.controller
        has_result = c.result is not None and not c.busy
        for act in self.export_actions.values():
            act.setEnabled(has_result)
        self.save_model_action.setEnabled(c.detector is not None and not c.busy)
        self.cancel_action.setEnabled(c.busy)
        stored = c.session is not None and c.run_id is not None and not c.busy
        self.report_action.setEnabled(stored)
        self.save_session_action.setEnabled(c.session is not None and not c.busy)

    def _logged(self, level: str, message: str) -> None:
        self.log_panel.add(level, message)
        self.statusBar().showMessage(("Error: " if level == "error" else "") + message, 15000)

    def _device_described(self, text: str) -> None:
        self.device_label.setText(f"device: {text}")
        self.device_label.setMinimumWidth(self.device_label.sizeHint().width())
        self.menuBar().setCornerWidget(self.device_label, Qt.TopRightCorner)  # re-lays out the corner
        self.menuBar().adjustSize()

    def _exported(self, folder: str) -> None:
        self.settings.setValue("export/last_dir", folder)
        self.open_export_action.setEnabled(True)
        self._sync_actions()

    # ================================================================== review
    def set_verdict(self, verdict: Optional[str]) -> bool:
        """The verdict keys and buttons: ``verdict`` for the image shown."""
        path = self.gallery.current_path()
        if path is None:
            return False
        return self.controller.set_verdict(path, verdict)

    def _note_edited(self, text: str) -> None:
        path = self.review.path
        if path is not None:
            self.controller.set_note(path, text)

    def mark_normal(self) -> bool:
        path = self.gallery.current_path()
        return path is not None and self.controller.mark_normal(path)

    def toggle_to_review(self) -> None:
        self.gallery.review_check.setChecked(not self.gallery.review_check.isChecked())
        self.gallery.view.setFocus()

    def _review_filter_toggled(self, on: bool) -> None:
        self.gallery.model.set_review_only(self.controller.review_queue() if on else None)
        self.controller.remember("to_review", on)
        if on and not self._restoring:
            self.gallery.select_row(0)  # the walk starts at the highest score

    def _review_changed(self) -> None:
        """Verdicts, notes or the band changed: tiles, counters, the band and the queue follow."""
        c = self.controller
        self.gallery.model.set_verdicts(c.verdicts())
        if self.gallery.review_check.isChecked():
            self.gallery.model.set_review_only(c.review_queue())
        band = c.band
        self.histogram.set_band(band.low if band else None, band.high if band else None)
        if band is not None:
            self.review.show_band(band.low, band.high)
        elif c.result is not None and c.result.rows and c.threshold is not None:  # a start for typing one
            scores = [r.score for r in c.result.rows]
            margin = (max(scores) - min(scores)) * 0.05
            self.review.show_band(c.threshold.value - margin, c.threshold.value + margin)
        status = c.review_status()
        self.review.show_counters(status.describe() if status is not None else
                                  "no stored run" if c.result is None or c.session is None else "not stored")
        path = self.gallery.current_path()
        self.review.show_image(path, c.verdict(path) if path else None, c.note(path) if path else "")

    def show_curves(self) -> CurvesDialog:
        """ROC / precision-recall from the verdicts, with the threshold for a chosen recall (not modal)."""
        if self._curves is None:
            self._curves = CurvesDialog(self)
            self._curves.recall_changed.connect(lambda _r: self._update_curves())
            self._curves.apply_requested.connect(self.controller.set_threshold)
            self.controller.review_changed.connect(self._update_curves)
            self.controller.result_changed.connect(lambda _r: self._update_curves())
        self._update_curves()
        self._curves.show()
        return self._curves

    def _update_curves(self) -> None:
        if self._curves is not None:
            self._curves.show_curves(*self.controller.verdict_curves(self._curves.recall.value()))

    def review_counters(self) -> str:
        return self.review.counters.text()

    def _session_changed(self, session) -> None:
        self.review.set_read_only(session.read_only_reason if session is not None and session.read_only else "")
        if session is not None:
            self.settings.setValue("session/last", str(session.path))
            self.settings.setValue("session/last_folder", str(session.folder or ""))
        self._sync_actions()

    def _session_restored(self, state: dict) -> None:
        """Sort, filters and selection as they were when the session was last used."""
        self._restoring = state or {"restoring": True}
        try:
            name, settings = state.get("run_detector"), state.get("run_settings") or {}
            if name in REGISTRY and REGISTRY[name].availability()[0] and self.controller.detector is None:
                try:  # the detector and settings of the run shown (a model in memory keeps its own)
                    config = make_config(name, settings)
                except (ConfigError, TypeError, ValueError):
                    config = None
                self.detector_panel.select_detector(name, config)
            if "sort" in state:
                self.gallery.set_sort_by_score(state["sort"] == "score")
            if "flagged_only" in state:
                self.gallery.set_flagged_only(bool(state["flagged_only"]))
            if "to_review" in state:
                self.gallery.review_check.setChecked(bool(state["to_review"]))
            if state.get("selection"):
                self.gallery.select_path(Path(state["selection"]))
        finally:
            self._restoring = {}

    def _remember_selection(self) -> None:
        self._selection_timer.stop()
        path = self.gallery.current_path()
        if path is not None:
            self.controller.remember("selection", str(path))

    def open_session_file(self, path: Optional[str] = None, folder: Optional[str] = None) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open a session", str(Path.home()), "Sessions (*.db)")
            if not path:
                return False
        if not self.confirm_discard(f"Open {path}"):
            return False
        return self.controller.open_session_file(path, folder)

    def reopen_last_session(self) -> bool:
        """Open the session used last (the app offers it when it starts)."""
        folder = self.settings.value("session/last_folder", "", type=str)
        if not folder or not Path(folder).is_dir():
            self.controller.log("warning", "No last session to reopen.")
            return False
        if not self.confirm_discard(f"Reopen {folder}"):
            return False
        last = self.settings.value("session/last", "", type=str)
        if last and Path(last).is_file():
            return self.controller.open_session_file(last, folder)
        self.controller.open_folder(folder)
        return True

    def offer_last_session(self) -> bool:
        """At start: offer to reopen the last session; True when it is being reopened."""
        folder = self.settings.value("session/last_folder", "", type=str)
        if not folder or not Path(folder).is_dir():
            return False
        answer = QMessageBox.question(self, "Reopen the last session?",
                                      f"Reopen the session of {folder} (results, threshold, verdicts and notes)?",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
        return answer == QMessageBox.Yes and self.reopen_last_session()

    def save_session_as(self, path: Optional[str] = None) -> bool:
        c = self.controller
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save session as", str(Path.home() / "session.db"),
                                                  "Sessions (*.db)")
            if not path:
                return False  # the file dialog asked before replacing
        return c.save_session_as(path)

    def export_report(self, path: Optional[str] = None, overwrite: Optional[bool] = None) -> bool:
        c = self.controller
        if path is None:
            start = self.settings.value("export/last_dir", str(Path.home()), type=str)
            path, _ = QFileDialog.getSaveFileName(self, "Write the HTML report", str(Path(start) / "report.html"),
                                                  "HTML (*.html)")
            if not path:
                return False
            overwrite = True  # the file dialog asked
        target = Path(path)
        if target.exists() and not overwrite:
            if overwrite is None and self._ask_overwrite("the report", target.parent, [target]):
                return c.export_report(target)
            c.log("info", f"Report not written: {target} exists.")
            return False
        return c.export_report(target)

    def show_shortcuts(self) -> QDialog:
        """Help > Keyboard shortcuts: every key of the window (not modal)."""
        dlg = QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        rows = "".join(f"<tr><td style='padding-right:16px'><b>{k}</b></td><td>{what}</td></tr>"
                       for k, what in SHORTCUTS)
        label = QLabel(f"<table>{rows}</table>")
        label.setObjectName("shortcutsTable")
        lay = QVBoxLayout(dlg)
        lay.addWidget(label)
        dlg.show()
        self._shortcuts_dialog = dlg
        return dlg

    # ================================================================== closing
    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing while a task runs asks first; then the task is cancelled and the window stays
        up, drawing the shutdown's progress, until every job has stopped (the UI thread never
        waits on it). A second close during the shutdown waits for it."""
        c = self.controller
        winding_down = self._shutdown_timer is not None
        if c.busy and not winding_down and self.confirm_close_when_busy:
            answer = QMessageBox.question(self, "Quit while working?",
                                          f"'{c.busy_title}' is still running. Cancel it and close?",
                                          QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            if answer != QMessageBox.Yes:
                event.ignore()
                return
            event.ignore()
            self._begin_shutdown(c.busy_title)
            return
        if not winding_down and not c.busy and not self.confirm_discard("Close"):
            event.ignore()
            return
        if winding_down and not self._shutdown_done:
            self._shutdown_timer.stop()  # closed again: wait here for the last jobs
        self._remember_selection()
        self.save_settings()
        c.shutdown()
        super().closeEvent(event)

    def _begin_shutdown(self, title: str) -> None:
        started = time.monotonic()
        self.controller.shutdown(timeout_ms=0)  # cancel everything, start nothing new, do not wait
        for w in (self.gallery, self.image_view, self.histogram, self.grouping):
            w.setEnabled(False)
        self.menuBar().setEnabled(False)
        p = self.detector_panel
        p.set_busy(f"Cancelling '{title}' to close…")
        self.statusBar().showMessage(f"Cancelling '{title}'; the window closes when it has stopped…")

        def poll() -> None:
            if self.controller.runner.is_running():
                p.progress_label.setText(f"Cancelling '{title}' to close… {time.monotonic() - started:.1f} s")
                return
            self._shutdown_timer.stop()
            self._shutdown_done = True
            self.close()

        self._shutdown_timer = QTimer(self)
        self._shutdown_timer.setInterval(50)
        self._shutdown_timer.timeout.connect(poll)
        self._shutdown_timer.start()
