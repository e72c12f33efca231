"""What the window's views read of the controller: its signals and the state of its rooms.

:class:`ControllerView` is the read side of :class:`~app.controller.Controller`: the signals the
views listen to and read-only properties over the plain-Python rooms the controller builds (the
results and threshold in force, :class:`~app.view_state.ViewState`; the model,
:class:`~app.model_state.ModelState`; the session, :class:`~app.session_state.SessionState`; the
decisions, :class:`~app.review_state.ReviewState`; the folder, the jobs). The commands are the
controller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.workers import FolderInfo
from core.data.images import ImageSource
from core.detectors.base import Detector
from core.results import ScanResult, ScanRow
from core.results.review import ReviewBand, ReviewCounts
from core.results.threshold import DEFAULT_FPR, Threshold
from core.session import Session


class ControllerView(QObject):
    folder_opened = Signal(object)  # FolderInfo
    thumbnails_arrived = Signal(list)  # [(index, uint8 array | None, reason)]
    image_loaded = Signal(object, object)  # path, uint8 array
    image_failed = Signal(object, str)  # path, reason
    outline_loaded = Signal(object, object)  # path, bool outline of its ground-truth mask or None
    skipped_changed = Signal(int)  # files of the open folder that could not be read
    detector_changed = Signal(object)  # Detector | None
    scan_started = Signal(int)  # number of images to score
    rows_arrived = Signal(list)  # [ScanRow] of the scan in progress
    result_changed = Signal(object)  # the complete ScanResult shown now, or None
    threshold_changed = Signal(object)  # Threshold | None, flags of the rows were updated
    map_range_changed = Signal(float, float)  # one heat-map scale for the batch
    heat_scale_changed = Signal(object)  # HeatScale anchored at the threshold, or None
    busy_changed = Signal(str)  # title of the main task, "" when idle
    progressed = Signal(int, int, str)  # main task: done, total, message
    logged = Signal(str, str)  # level ("info", "warning", "error"), message
    exported = Signal(str)  # folder written to
    grouping_changed = Signal(object)  # the ScanResult whose groups (and flags) changed
    device_described = Signal(str)
    stale_changed = Signal(str)  # "" or what the shown results are, e.g. "previous run (ocsvm)"
    session_changed = Signal(object)  # the open Session or None (read_only / read_only_reason on it)
    review_changed = Signal()  # verdicts, notes or the review band changed
    maps_restored = Signal()  # the heat maps of a restored run are in its rows
    session_restored = Signal(dict)  # front-end state kept in the session (sort, filter, selection, ...)
    counts_changed = Signal(object)  # ReviewCounts: every count on screen, recomputed on every change
    good_folder_restored = Signal(str)  # the open folder's own good images ("" when it has none yet)

    # ================================================================ the jobs
    @property
    def busy(self) -> bool:
        return self.jobs.busy

    @property
    def busy_title(self) -> str:
        return self.jobs.busy_title

    @property
    def busy_kind(self) -> str:
        return self.jobs.busy_kind

    def helper_running(self, kind: str) -> bool:
        """Whether a helper job of ``kind`` ('list', 'thumbnails', 'image', 'range') is under way."""
        return self.jobs.helper_running(kind)

    @property
    def scanning(self) -> bool:
        return self.busy_kind == "scan"

    def log(self, level: str, message: str) -> None:
        self.logged.emit(level, message)

    # ================================================================ the rooms, as the views read them
    @property
    def result(self) -> Optional[ScanResult]:
        """The complete scan shown (None while a scan runs or before any)."""
        return self.state.result

    @property
    def threshold_override(self) -> Optional[Threshold]:
        return self.state.threshold_override

    @property
    def map_range(self) -> tuple[float, float]:
        return self.state.map_range

    @property
    def detector(self) -> Optional[Detector]:
        return self.models.detector

    @property
    def folder(self) -> Optional[FolderInfo]:
        return self.files.folder

    @property
    def source(self) -> Optional[ImageSource]:
        return self.files.source

    @property
    def skipped(self) -> dict[Path, str]:
        return self.files.skipped

    @property
    def good_folder(self) -> Optional[Path]:
        return self.model_room.good_folder

    @property
    def last_export_dir(self) -> Optional[Path]:
        return self.exports.last_dir

    @property
    def session(self) -> Optional[Session]:
        return self.sessions.session

    @property
    def run_id(self) -> Optional[int]:
        return self.sessions.run_id

    @property
    def use_sessions(self) -> bool:
        return self.sessions.enabled

    @use_sessions.setter
    def use_sessions(self, on: bool) -> None:
        self.sessions.enabled = on

    @property
    def band(self) -> Optional[ReviewBand]:
        return self.review.band

    def rows(self) -> list[ScanRow]:
        """The rows shown now: the complete result, or the rows of the scan in progress."""
        return self.state.rows()

    def row_for(self, path: Path) -> Optional[ScanRow]:
        return self.state.row_for(path)

    @property
    def threshold(self) -> Optional[Threshold]:
        return self.state.threshold(self.models.threshold)

    @property
    def threshold_source(self) -> str:
        """Where the threshold in force came from, in words (shown beside it everywhere)."""
        return self.state.threshold_source(self.models.threshold)

    @property
    def stale(self) -> str:
        """"" when the results shown are those of the model in memory and no new run is under
        way; otherwise what they are (e.g. "previous run (ocsvm)")."""
        return self._stale

    def _sync_stale(self) -> None:
        stale = self.state.stale(self.detector, running=self.busy_kind in ("fit", "scan"))
        if stale != self._stale:
            self._stale = stale
            self.stale_changed.emit(stale)

    @property
    def detector_name(self) -> str:
        if self.result is not None:
            return self.result.detector
        return self.detector.name if self.detector is not None else ""

    # ================================================================ what the views ask of the rooms
    def counts(self) -> ReviewCounts:
        """Every count on screen (flagged, reviewed, to review, disagree, the band's zones, the ≠
        marks, the walk) from the one function the report and the export use too."""
        thr, res = self.threshold, self.result
        grouped = res is not None and res.grouping is not None
        return self.review.counts(self.rows(), None if thr is None or grouped else thr.value)

    def detector_matches(self, name: str, overrides: dict, fpr: Optional[float] = None) -> bool:
        """Whether the current detector is ``name`` with exactly these settings (and, given
        ``fpr``, a threshold calibrated at that false-positive rate)."""
        return self.models.matches(name, overrides, fpr)

    def run_plan(self, name: str, overrides: dict, fpr: float = DEFAULT_FPR) -> str:
        """What Run does now (:meth:`ModelState.plan`): "scan", "train", "ask" or "blocked"."""
        return self.models.plan(name, overrides, fpr, self.folder.folder if self.folder else None, self.good_folder,
                                self.good_folder_problem())

    def good_folder_problem(self) -> str:
        """Why the good folder cannot be trained on ("" when it can)."""
        return self.model_room.good_folder_problem()

    def unsaved(self) -> str:
        """What opening another folder or closing would lose, in words ("" when nothing)."""
        return self.sessions.unsaved(self.result)

    def verdict(self, path: Path) -> Optional[str]:
        return self.review.verdict(path)

    def verdicts(self) -> dict[str, str]:
        """The inspector's verdicts, keyed by ``str(path)``."""
        return self.review.verdicts()

    def note(self, path: Path) -> str:
        return self.review.note(path)

    def verdict_curves(self, recall: float = 0.95):
        """ROC / precision-recall of the shown run from the inspector's OK / NG verdicts, and the
        threshold that flags ``recall`` of the NG images: ``(curves | None, suggestion | None, why)``."""
        return self.review.curves(self.result, recall)

    def review_queue(self) -> list[Path]:
        """Unreviewed images in the band or flagged, highest score first (the "to review" walk)."""
        return list(self.counts().queue) if self.result is not None else []
