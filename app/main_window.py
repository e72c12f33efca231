"""The inspector's window: docks, settings, and the wiring from the controller to the views.

Its menus and keys (:mod:`app.window_menus`), the user's commands (:mod:`app.window_commands`)
and the review (:mod:`app.window_review`) live in their own modules, one concern each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.controller import Controller, FolderInfo
from app.curves_dialog import CurvesDialog
from app.gallery import GalleryPanel
from app.grouping import GroupingPanel
from app.histogram import HistogramPanel
from app.image_view import ImageView
from app.input_guard import guard_inputs
from app.panels import DetectorPanel, FolderPanel, LogPanel
from app.review_panel import ReviewPanel
from app.window_commands import CommandsMixin
from app.window_menus import APP_NAME, STATE_VERSION, MenusMixin
from app.window_review import ReviewMixin
from core.detectors.base import Detector
from core.detectors.registry import REGISTRY
from core.results import ScanResult
from core.runtime.device import resolve_device

MAX_RECENT = 8
ROWS_REFRESH_MS = 250  # the gallery and histogram follow a running scan at about 4 updates a second
SELECTION_SAVE_MS = 600  # the selection is kept in the session once it has rested this long



def default_settings() -> QSettings:
    return QSettings("AnomalyInspector", APP_NAME)


class MainWindow(CommandsMixin, ReviewMixin, MenusMixin, QMainWindow):
    """``settings`` and ``controller`` may be injected (tests use a temporary settings file)."""

    #: Closing while a task runs asks first and then lets it wind down with the window still
    #: drawing; False cancels and waits at once (tests that close a busy window use it).
    confirm_close_when_busy = True
    #: Opening another folder or closing with results no session keeps asks first (tests of other
    #: rooms switch it off; the prompt itself is tested with it on).
    ask_before_discarding = True
    #: The controller's questions (another folder's model, replacing a hand-set threshold) show a
    #: dialog; False answers each with its safe default, No (tests of other rooms switch it off).
    ask_questions = True

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
        detector = QWidget()  # the settings scroll; what the model is and Train / Run / Cancel stay in view
        dlay = QVBoxLayout(detector)
        dlay.setContentsMargins(0, 0, 0, 0)
        dlay.setSpacing(0)
        dlay.addWidget(scroll, 1)
        dlay.addWidget(self.detector_panel.controls)
        self.docks = {
            "folder": self._dock("Folder", self.folder_panel, Qt.LeftDockWidgetArea),
            "detector": self._dock("Detector", detector, Qt.LeftDockWidgetArea),
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
        guard_inputs(self)  # the wheel and the letter keys never change a field by accident
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
        c.counts_changed.connect(self._counts_changed)
        c.good_folder_restored.connect(self.detector_panel.set_good_folder)
        c.ask = self._ask_yes_no
        c.maps_restored.connect(self._refresh_current)
        self.review.verdict_requested.connect(self.set_verdict)
        self.review.note_edited.connect(self._note_edited)
        self.review.note_done.connect(self.gallery.view.setFocus)
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

    # ================================================================== controller -> views
    def _folder_opened(self, info: FolderInfo) -> None:
        self.folder_panel.show_folder(info.folder, len(info.paths), info.recursive)
        self.setWindowTitle(f"{APP_NAME} — {info.folder}")
        self.histogram.clear()
        self.image_view.clear()
        self.image_view.name_root = info.folder  # before the first image is selected and titled
        self.gallery.set_paths(info.paths, info.folder)
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

