"""What the window shows and the long work behind it, without any widget.

The controller holds the open folder and the good folder and runs the slow work (listing a
folder, decoding thumbnails and images, training, scoring, saving, loading, exporting) as jobs
of a :class:`~app.job_tracker.JobTracker`, with the Qt-free functions of :mod:`app.workers`.
Each concern of what is shown lives in a plain-Python object of its own, tested without a
window: the results and the threshold in force (:class:`~app.view_state.ViewState`), the model
in memory (:class:`~app.model_state.ModelState`), the folder's session
(:class:`~app.session_state.SessionState`) and the inspector's decisions
(:class:`~app.review_state.ReviewState`); the heat-map scales are :class:`~app.heat_range.HeatRange`'s.
The views only listen to the controller's signals and call its methods, so it is driven in
tests without a window (``tests/app/test_controller.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.exports import Exports
from app.folder_room import FolderRoom
from app.heat_range import HeatRange, anchor_score
from app.job_tracker import JobTracker
from app.model_room import ModelRoom
from app.review_state import ReviewState
from app.session_state import RestoredRun, SessionState, read_maps, read_run
from app.view_state import ViewState
from app.workers import EXPORT_KINDS, FolderInfo
from core.data.images import ImageSource
from core.detectors.base import Detector
from core.detectors.registry import REGISTRY
from core.engine.jobs import CallableJob, ScanJob
from core.engine.qt_bridge import JobRunner
from core.engine.session_model import scan_keeping_model
from core.grouping import GroupingError
from core.results import ScanResult, ScanRow, move_to_group, regroup
from core.results.threshold import DEFAULT_FPR, Threshold
from core.runtime.device import describe_device, resolve_device
from core.session import ReviewBand, ReviewCounts, Session

__all__ = ["EXPORT_KINDS", "Controller", "FolderInfo"]


class Controller(QObject):
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

    def __init__(self, runner: Optional[JobRunner] = None, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs = JobTracker(runner, self)
        self.runner = self.jobs.runner
        self.state = ViewState()
        self.files = FolderRoom(self.jobs, self.log, self)
        self.model_room = ModelRoom(self.jobs, self.log, self)
        self.models = self.model_room.state
        self.sessions = SessionState(self.log)
        self.review = ReviewState(self.sessions, self.log)
        self.exports = Exports(self.jobs, self.log, self)
        self.heat = HeatRange(self.jobs, self.rows, lambda: self.result is None,
                              lambda: anchor_score(self.threshold.value if self.threshold else None, self.result), self)
        self.heat.computed.connect(self._range_computed)
        f = self.files
        f.listed.connect(self._folder_listed)
        for name in ("thumbnails_arrived", "image_loaded", "image_failed", "outline_loaded", "skipped_changed"):
            getattr(f, name).connect(getattr(self, name))
        self.model_room.ready.connect(self._model_ready)
        self.model_room.hand_threshold_saved.connect(self._hand_threshold_saved)
        self.exports.exported.connect(self.exported)
        #: Asks the inspector a yes / no question (the window shows a dialog); the answer of a bare
        #: controller is no.
        self.ask: Callable[[str, str], bool] = lambda _title, _text: False
        self.operation = 0  # counts the user's commands; a scan that follows training is the same one
        self._scan_detector: Optional[Detector] = None  # the model of the scan under way
        self._stale = ""
        self._source_before_restore: Optional[str] = None
        for changed in (self.result_changed, self.threshold_changed, self.review_changed, self.grouping_changed,
                        self.rows_arrived):  # every count follows every change (one function: counts())
            changed.connect(self._recount)
        self.jobs.busy_changed.connect(self.busy_changed)
        self.jobs.busy_changed.connect(lambda _title: self._sync_stale())
        self.jobs.progressed.connect(self.progressed)
        self.jobs.logged.connect(self.logged)

    # ================================================================ job plumbing
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

    def _submit(self, job, kind: str, on_success, **kw) -> int:
        return self.jobs.submit(job, kind, on_success, **kw)

    def cancel(self) -> bool:
        """Ask the main task to stop; returns whether one was running."""
        title = self.jobs.busy_title
        if not self.jobs.cancel_main():
            return False
        self.log("info", f"Cancelling: {title}…")
        return True

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel every job and wait for their threads (the window calls this on close)."""
        self.heat.stop()
        done = self.jobs.shutdown(timeout_ms)
        if done:
            self._close_session()
        return done

    def log(self, level: str, message: str) -> None:
        self.logged.emit(level, message)

    def _refuse_if_busy(self) -> bool:
        if self.busy:
            self.log("warning", f"Busy: {self.busy_title}. Wait for it or press Cancel.")
            return True
        return False

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

    # ================================================================ device, folder, images
    def describe_device(self) -> None:
        self._submit(CallableJob(lambda p, c, e: describe_device(resolve_device("auto")), title="device"),
                     "device", self.device_described.emit)

    def open_folder(self, folder: str | os.PathLike, recursive: Optional[bool] = None,
                    include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """List the image files of ``folder`` off the UI thread (``include`` / ``exclude``:
        file-name patterns), then show them."""
        if self.scanning:
            self.log("warning", "A scan is running: cancel it before opening another folder.")
            return
        self.files.list(folder, recursive, include, exclude)

    def _folder_listed(self, info: FolderInfo) -> None:
        if self.scanning:  # a scan started while the listing ran: keep the folder it scans
            self.log("warning", f"Not opening {info.folder}: a scan is running.")
            return
        before = self.folder
        self.files.show(info)
        self._set_result(None)
        self.state.previous = None
        self._open_session(info.folder)
        self.folder_opened.emit(info)
        self._restore_good_folder(before.folder if before is not None else None, info.folder)
        self.skipped_changed.emit(0)
        self.files.decode_thumbnails()
        self._restore_latest_run()

    def load_image(self, path: Path) -> None:
        """Decode one image in full for the image view (only the latest request counts)."""
        row, s, rid = self.row_for(path), self.session, self.run_id
        if row is None or row.anomaly_map is not None or s is None or rid is None:
            self.files.load_image(path)
            return

        def got_map(m) -> None:  # a restored run whose maps are on their way: this one's comes with the image
            if row.anomaly_map is None and self.row_for(path) is row:
                row.anomaly_map = m

        self.files.load_image(path, lambda: s.load_map(path, rid), got_map)

    def set_good_folder(self, folder: Optional[str | os.PathLike]) -> None:
        """The folder trained on: always the one the window shows, usable or not (see
        :meth:`good_folder_problem`)."""
        self.model_room.good_folder = Path(folder).expanduser() if folder else None

    def good_folder_problem(self) -> str:
        """Why the good folder cannot be trained on ("" when it can)."""
        return self.model_room.good_folder_problem()

    def keep_good_folder(self) -> None:
        """The good-images folder shown is the open folder's: its session keeps it for reopening."""
        if self.folder is not None:
            self.sessions.set_good_folder(self.good_folder)

    def _restore_good_folder(self, before: Optional[Path], now: Path) -> None:
        """The good images belong to the folder: its session's come back; another folder's are not
        carried over (the field is emptied); a first folder keeps the ones given (``gui --good``)."""
        s = self.session
        kept = s.good_folder() if s is not None else None
        if kept is not None:
            self.set_good_folder(kept)
            self.good_folder_restored.emit(str(kept))
        elif before is not None and before != now and self.good_folder is not None:
            self.log("info", f"The good images {self.good_folder} were {before}'s: choose {now}'s (Detector panel).")
            self.set_good_folder(None)
            self.good_folder_restored.emit("")
        else:
            self.keep_good_folder()

    # ================================================================ the model
    def detector_matches(self, name: str, overrides: dict, fpr: Optional[float] = None) -> bool:
        """Whether the current detector is ``name`` with exactly these settings (and, given
        ``fpr``, a threshold calibrated at that false-positive rate)."""
        return self.models.matches(name, overrides, fpr)

    def set_detector(self, detector: Optional[Detector], source: str = "", store: bool = False) -> None:
        """Make ``detector`` the model in memory (``source``: where it came from, for the
        threshold's provenance). Its threshold is the one in force from now on, for the shown
        results too (which are marked as a previous run until it scores them); with ``store``, the
        shown run's session records it."""
        self.models.bind(detector, self.folder.folder if self.folder else None, self.good_folder)
        self.state.model_source = source
        self._source_before_restore = None
        hand, new = self.state.hand_threshold, detector.threshold if detector is not None else None
        keep = hand is not None and new is not None and not self.ask("Replace the hand-set threshold?", (
            f"The threshold in force, {hand.value:.6g}, was {self.state.override_reason}. The new {detector.name} "
            f"model brings its own: {new.describe()}.\n\nYes: use the model's threshold.\nNo: keep {hand.value:.6g}."))
        if keep:
            self.log("info", f"The threshold {hand.value:.6g} ({self.state.override_reason}) stays in force; the "
                             f"{detector.name} model's own is {new.value:.6g} (Reset threshold to use it).")
        self.state.apply_threshold(hand if keep else None, new, self.state.override_reason if keep else "set by hand")
        if store:
            self._store_threshold(f"threshold of the model in memory ({source or 'no source'})")
        self.detector_changed.emit(detector)
        self.threshold_changed.emit(self.threshold)
        self._sync_stale()
        self.heat.request()

    def train(self, name: str, overrides: Optional[dict] = None, fpr: float = DEFAULT_FPR, device: str = "auto",
              then_scan: bool = False) -> bool:
        """Train a fresh ``name`` detector on the good folder; a zero-shot one is only built."""
        if self._refuse_if_busy():
            return False
        if not then_scan:
            self.operation += 1
        started = self.model_room.train(name, dict(overrides or {}), fpr, device, then_scan)
        if started:
            self.keep_good_folder()
        return started

    def _model_ready(self, det: Detector, source: str, then_scan: bool) -> None:
        self.set_detector(det, source, store=not then_scan)  # the model of the open folder, with its good images
        if then_scan:
            self._start_scan()

    def run_plan(self, name: str, overrides: dict, fpr: float = DEFAULT_FPR) -> str:
        """What Run does now: "scan" with the model in memory; "train" a new one first; "ask" before
        using a model that is not the open folder's (another folder's, or one trained on other good
        images while none are chosen); "blocked" while the good images chosen cannot be used."""
        if not self.models.matches(name, overrides, fpr):
            return "train"
        if REGISTRY[name].zero_shot:
            return "scan"
        if self.models.stale_good(self.good_folder):
            return "ask" if self.good_folder is None else "blocked" if self.good_folder_problem() else "train"
        return "ask" if self.models.foreign(self.folder.folder if self.folder else None) else "scan"

    def run(self, name: str, overrides: Optional[dict] = None, fpr: float = DEFAULT_FPR, device: str = "auto") -> bool:
        """Score the open folder; trains first when no model fits the chosen settings."""
        if self._refuse_if_busy():
            return False
        if self.source is None or len(self.source) == 0:
            self.log("error", "Open a folder of images to scan first (File > Open folder…).")
            return False
        self.operation += 1
        overrides = dict(overrides or {})
        plan = self.run_plan(name, overrides, fpr)
        if plan == "blocked":
            self.log("error", f"Cannot run: the {self.good_folder_problem()} (the model in memory was trained on "
                              f"{self.models.trained_on()})")
            return False
        if plan == "ask":
            folder = self.folder.folder
            if self.ask("Use another folder's model?", self.models.question(folder, self.good_folder)):
                self.models.bind(self.detector, folder, self.good_folder, self.models.fingerprint)
                self.log("info", f"Scoring {folder} with the {self.detector.name} model of another folder, as asked.")
                plan = "scan"
            elif self.good_folder_problem():
                self.log("info", f"Not scored: the model in memory is not {folder}'s; choose its good images to "
                                 "train its own.")
                return False
            else:
                plan = "train"
        if plan == "scan":
            self._start_scan()
            return True
        started = self.train(name, overrides, fpr, device, then_scan=True)
        if started and not REGISTRY[name].zero_shot:
            why = ("the good images changed since the model in memory was trained"
                   if self.models.matches(name, overrides, fpr) else f"no {name} model trained with these settings yet")
            self.log("info", f"{why[0].upper()}{why[1:]}: training on {self.good_folder} first.")
        return started

    def save_model(self, folder: str | os.PathLike, store_hand_threshold: bool = False) -> bool:
        """Save the model in memory. With a threshold set by hand in force, ``store_hand_threshold``
        saves that one (the model records it as set by hand); otherwise the model keeps its own
        and the log says the hand-set one was not saved."""
        if self._refuse_if_busy():
            return False
        if self.detector is not None and self.detector.fitted:
            self.operation += 1
        return self.model_room.save(folder, self.state.hand_threshold, store_hand_threshold)

    def _hand_threshold_saved(self, folder_name: str) -> None:
        self.state.model_source = f"saved with the model {folder_name}"
        self.state.threshold_override = None
        self.threshold_changed.emit(self.threshold)

    def open_model(self, folder: str | os.PathLike, device: str = "auto") -> bool:
        if self._refuse_if_busy():
            return False
        self.operation += 1
        return self.model_room.open(folder, device)

    # ================================================================ scanning
    def _set_result(self, result: Optional[ScanResult]) -> None:
        self.heat.stop()  # an estimate under way is superseded
        self.state.set_result(result, self.state.scored_by)  # the scorer was recorded when the scan ended
        if not any(r.anomaly_map is not None for r in self.rows()):
            self._range_computed((0.0, 1.0), None)  # no maps shown: no scale of earlier ones lingers
        self.result_changed.emit(result)
        self._sync_stale()
        self.heat.request()

    def _start_scan(self) -> None:
        det = self.detector
        if self._source_before_restore is not None:  # the threshold comes from the model in memory again
            self.state.model_source, self._source_before_restore = self._source_before_restore, None
        self.state.begin_scan()
        self._scan_detector = det
        session = self.sessions.writable
        if session is not None:  # incremental: only new or changed images are scored; the model is kept
            src, thr, good = self.source, self.state.hand_threshold, self.models.trained_on()
            job = CallableJob(lambda p, c, e: scan_keeping_model(session, det, src, good, threshold=thr, progress=p,
                                                                 cancel=c, on_row=lambda i, row: e((i, row)),
                                                                 keep_extras=True),
                              title=f"Scoring {len(src)} images with {det.name} into the session")
            done = self._scanned_into_session
        else:
            job, done = ScanJob(det, self.source, threshold=self.state.hand_threshold, keep_extras=True), self._scanned
        self.sessions.run_id = None
        self._submit(job, "scan", done, main=True, on_partial=self._scan_rows,
                     on_failure=lambda msg, tb: self._scan_ended(f"Scan failed: {msg}", "error"),
                     on_cancel=lambda: self._scan_ended("Scan cancelled", "warning"))
        self.scan_started.emit(len(self.source))

    def _scan_rows(self, partials: list) -> None:
        rows = [row for _i, row in partials]
        self.state.add_rows(rows)
        self.rows_arrived.emit(rows)
        self.heat.request()

    def _scanned(self, result: ScanResult) -> None:
        for s in result.skipped:
            self.files.note_skipped(Path(s.path), s.reason)
        self.skipped_changed.emit(len(self.skipped))
        self.state.finish_scan(result, scored_by=self._scan_detector)
        self._set_result(result)
        thr = result.threshold.describe() if result.threshold else "no threshold"
        if result.grouping is not None:
            thr = f"groups by {result.grouping.describe()}"
        elif result.grouping_note:
            thr = f"not grouped: {result.grouping_note}"
        self.log("info", f"Scanned {len(result.rows)} images with {result.detector} in {result.seconds:.1f} s: "
                         f"{len(result.flagged)} flagged; {thr}; {len(result.skipped)} skipped")

    def _scanned_into_session(self, done) -> None:
        out, kept, why = done
        if kept is not None and self.detector is self._scan_detector:
            self.models.fingerprint = kept.fingerprint
        if why:
            self.log("warning", f"{why[0].upper()}{why[1:]}")
        self.sessions.run_id = out.run_id
        hand = self.state.hand_threshold
        if out.run_id is not None:
            if hand is not None:
                self.sessions.store_threshold(hand.value, self.state.override_reason)
            elif out.result.grouping is None:
                self._recalibrate_new_run(out)
            self.review.carry_band(out.run_id, out.result.detector)
        self._scanned(out.result)
        self.log("info", f"Session run {out.run_id}: {out.describe()} ({self.session.path})")
        self.review_changed.emit()

    def _recalibrate_new_run(self, out) -> None:
        """A new run of a session whose good set ("this one is normal") holds some of its images:
        its threshold is re-calibrated with them, as the last run's was."""
        thr, n = self.review.recalibrate(out.run_id, out.result.rows)
        if thr is None:
            return
        self.state.threshold_override = None
        out.result.apply_threshold(thr)
        if self.detector is self._scan_detector and self.detector is not None:
            self.detector.threshold = thr
        self.state.model_source = f"re-calibrated with {n} image{'s' if n != 1 else ''} marked normal"
        self.log("info", f"Run {out.run_id} re-calibrated with the {n} image{'s' if n != 1 else ''} marked normal: "
                         f"{thr.describe()}")

    def _scan_ended(self, what: str, level: str) -> None:
        """A scan that did not complete: its partial rows are discarded, never shown as final."""
        n, prev = self.state.abandon_scan()
        self._set_result(prev)
        tail = "showing the previous complete scan" if prev is not None else "no results are shown"
        self.log(level, f"{what}: {n} partial scores discarded; {tail}.")

    def _range_computed(self, rng: tuple[float, float], scale) -> None:
        self.state.map_range = rng
        self.state.heat_scale = scale
        self.map_range_changed.emit(*self.map_range)
        self.heat_scale_changed.emit(scale)

    # ================================================================ threshold
    def recalibrate(self, fpr: float) -> bool:
        """Re-calibrate the model's threshold at the target false-positive rate ``fpr`` on the
        held-out good scores it keeps (as ``scan --model M --fpr F`` does): no retraining and no
        rescoring. Returns whether the threshold changed."""
        det = self.detector
        thr = det.threshold if det is not None else None
        if det is None or det.zero_shot or thr is None or thr.method != "calibrated" or (
                thr.fpr is not None and abs(thr.fpr - fpr) < 1e-12):
            return False
        if self.busy_kind in ("fit", "scan"):
            self.log("warning", "Busy: the target FPR applies once the running task has ended.")
            return False
        new, why = self.models.recalibrated(fpr)
        if new is None:
            if why:
                self.log("warning", why)
            return False
        det.threshold = new
        if not self.state.model_source.startswith("re-calibrated"):
            self.state.model_source = f"re-calibrated without retraining ({self.state.model_source or 'this model'})"
        self.log("info", f"Re-calibrated {det.name} at FPR {fpr:g}: {new.describe()}"
                         + ("; the threshold set by hand stays in force" if self.threshold_override else ""))
        if self.threshold_override is None:
            self._apply_threshold(None, new, f"re-calibrated at FPR {fpr:g} without retraining")
        return True

    def set_threshold(self, value: float, how: str = "set by hand") -> None:
        """Set the decision threshold by hand (``how``: e.g. "set from the verdict ROC at recall 0.95");
        every shown row is re-flagged."""
        self._apply_threshold(Threshold.explicit(float(value)), reason=how)
        rows = self.rows()
        self.log("info", f"Threshold {how}: {value:.6g}; {sum(bool(r.flagged) for r in rows)} of {len(rows)} flagged")

    def reset_threshold(self) -> None:
        """Back to the detector's calibrated threshold."""
        thr = self.detector.threshold if self.detector is not None else None
        if thr is None and self.run_id is not None and self.session is not None:
            thr = self.session.run(self.run_id).threshold  # a restored run: its own threshold
        self._apply_threshold(None, thr, "reset")
        self.log("info", f"Threshold reset: {thr.describe() if thr else 'no threshold'}")

    def _apply_threshold(self, override: Optional[Threshold], fallback: Optional[Threshold] = None,
                         reason: str = "") -> None:
        """Put a threshold in force (``override`` set by hand, else ``fallback``); with ``reason``,
        the shown run's session records it (the report and the export then count with it)."""
        self.threshold_changed.emit(self.state.apply_threshold(override, fallback, reason if override else "set by hand"))
        if reason:
            self._store_threshold(reason)
        self.heat.request()  # the anchored scale follows the threshold

    def _store_threshold(self, reason: str) -> None:
        """Record the threshold in force for the session's run shown (not for a grouped run)."""
        thr, res = self.threshold, self.result
        if thr is not None and res is not None and res.grouping is None:
            self.sessions.store_threshold(thr.value, reason)

    def counts(self) -> ReviewCounts:
        """Every count on screen (flagged, reviewed, to review, disagree, the band's zones, the ≠
        marks, the walk) from the one function the report and the export use too."""
        thr, res = self.threshold, self.result
        grouped = res is not None and res.grouping is not None
        return self.review.counts(self.rows(), None if thr is None or grouped else thr.value)

    def _recount(self, *_args) -> None:
        self.counts_changed.emit(self.counts())

    # ================================================================ grouping (zero-shot scans)
    def regroup(self, method: str) -> bool:
        """Split the shown zero-shot scan again with ``method``; the session's hand moves stay on top."""
        res = self.result
        if res is None or res.grouping is None or self.busy:
            return False
        seed = self.detector.config.seed if self.detector is not None else 0
        try:
            g = regroup(res, method, seed=seed)  # milliseconds for thousands of scores
        except GroupingError as exc:
            self.log("error", f"Cannot group: {exc}")
            return False
        if self.session is not None and self.run_id is not None:
            self.session.apply_decisions(res, self.run_id)
        self.log("info", f"Regrouped: {g.describe()}")
        self.grouping_changed.emit(res)
        return True

    def move_to_group(self, path: Path, group: Optional[str] = None) -> bool:
        """Move the image at ``path`` to ``group`` ('normal' / 'suspect'; default: the other one)."""
        res = self.result
        if res is None or res.grouping is None or self.busy:
            return False
        index = next((i for i, r in enumerate(res.rows) if str(r.path) == str(path)), None)
        if index is None:
            return False
        if group is None:
            group = "normal" if res.rows[index].columns.get("group") == "suspect" else "suspect"
        move_to_group(res, index, group)
        self.review.move_to_group(res.rows[index].path, group)
        self.log("info", f"Moved {Path(path).name} to the {group} group ({res.grouping.describe()})")
        self.grouping_changed.emit(res)
        return True

    # ================================================================ session
    def _open_session(self, folder: Path) -> None:
        self._close_session()
        s = self.sessions.open_for(folder)
        self.review.root = folder
        if s is not None:
            self.review.load(s)
            self.session_changed.emit(s)

    def _close_session(self) -> None:
        self.sessions.close()
        self.review.clear()
        self.session_changed.emit(None)

    def _restore_latest_run(self) -> None:
        s = self.session
        runs = s.runs() if s is not None else []
        if not runs:
            return
        run = runs[-1]
        # Scores, flags and decisions first (a fraction of a second for thousands of images); the
        # heat maps follow off the UI thread, the one on screen at once (:meth:`load_image`).
        have = self.models.fingerprint
        self._submit(CallableJob(lambda p, c, e: read_run(s, run, have), title=f"Restoring session run {run.id}"),
                     "restore", self._restored, main=True,
                     on_failure=lambda msg, tb: self.log("error", f"Cannot restore session run {run.id}: {msg}"))

    def _restored(self, got: RestoredRun) -> None:
        if self.session is not got.session:  # another folder was opened meanwhile
            return
        run, result = got.run, got.result
        self.sessions.run_id = run.id
        self.state.previous = None
        self.state.threshold_override, self.state.override_reason = got.hand, got.reason
        if got.model_problem:
            self.log("warning", f"{got.model_problem[0].upper()}{got.model_problem[1:]}")
        if got.model is not None or (got.model_record is not None and self.models.fingerprint == run.fingerprint):
            # the folder's own model, as kept with the run: it scored the results shown
            det, rec = got.model or self.detector, got.model_record
            self.models.bind(det, self.folder.folder, self.good_folder or rec.good_folder, run.fingerprint)
            self.state.scored_by = det
            if got.model is not None:
                self._source_before_restore = f"the model kept with session run {run.id}"
                self.detector_changed.emit(det)
                self.log("info", f"Model of run {run.id} restored: {det.name} from {rec.path}")
        if self._source_before_restore is None:  # the model in memory's own provenance, back at the next scan
            self._source_before_restore = self.state.model_source
        self.state.model_source = f"session run {run.id} of {run.finished_at[:16]}"
        self.review.restore_band(got.band, run.detector)
        self._set_result(result)
        self.threshold_changed.emit(self.threshold)
        self.log("info", f"Restored {run.describe()}; {self.threshold_source}; {len(self.review.verdicts())} verdicts")
        self.session_restored.emit(got.ui)
        self.review_changed.emit()
        s, paths = got.session, [r.path for r in result.rows]

        def loaded(maps: list) -> None:
            if self.result is not result:  # another run or folder is shown now
                return
            for row, m in zip(result.rows, maps):
                if row.anomaly_map is None:
                    row.anomaly_map = m
            self.heat.request()
            self.maps_restored.emit()

        self._submit(CallableJob(lambda p, c, e: read_maps(s, run.id, paths, p, c), title="heat maps of the restored run"),
                     "maps", loaded)

    def open_session_file(self, path: str | os.PathLike, folder: Optional[str | os.PathLike] = None) -> bool:
        """Open a session file (e.g. one written by ``scan --session`` on a server) and its folder;
        ``folder`` where its images are on this machine (default: the folder it records)."""
        if self._refuse_if_busy():
            return False
        s = self.sessions.open_file(path, folder)
        if s is None:
            return False
        self.open_folder(s.folder)
        return True

    def save_session_as(self, dest: str | os.PathLike) -> bool:
        """Copy the open session to ``dest`` (replaced; the caller asks first) and go on in the copy."""
        if self.session is None or self.folder is None:
            self.log("error", "No session is open: open a folder first.")
            return False
        if self._refuse_if_busy():
            return False
        before = self.session
        copy = self.sessions.save_as(dest, self.folder.folder)
        if copy is None:
            return False
        if copy is not before:
            self.review.load(copy)
            self.session_changed.emit(copy)
        return True

    def unsaved(self) -> str:
        """What opening another folder or closing would lose, in words ("" when nothing)."""
        return self.sessions.unsaved(self.result)

    def remember(self, key: str, value) -> None:
        """Front-end state (sort, filter, selection, detector) kept in the session for reopening."""
        self.sessions.remember(key, value)

    # ================================================================ review
    def verdict(self, path: Path) -> Optional[str]:
        return self.review.verdict(path)

    def verdicts(self) -> dict[str, str]:
        """The inspector's verdicts, keyed by ``str(path)``."""
        return self.review.verdicts()

    def note(self, path: Path) -> str:
        return self.review.note(path)

    def set_verdict(self, path: Path, verdict: Optional[str]) -> bool:
        """OK / NG / unsure (``None`` clears) for ``path``; committed to the session at once."""
        return self._reviewed(self.review.set_verdict(path, verdict))

    def set_note(self, path: Path, text: str) -> bool:
        return self._reviewed(self.review.set_note(path, text))

    def set_review_band(self, low: Optional[float], high: Optional[float]) -> bool:
        """Two thresholds: at or below ``low`` passes, above ``high`` fails, between is to review
        (``None, None`` removes the band). Kept with the session's run shown."""
        return self._reviewed(self.review.set_band(low, high))

    def _reviewed(self, changed: bool) -> bool:
        if changed:
            self.review_changed.emit()
        return changed

    def review_queue(self) -> list[Path]:
        """Unreviewed images in the band or flagged, highest score first (the "to review" walk)."""
        return list(self.counts().queue) if self.result is not None else []

    def mark_normal(self, path: Path) -> bool:
        """"This one is normal": the image joins the session's good set and the run's threshold is
        re-calibrated with it (no re-scoring)."""
        recorded, thr = self.review.mark_normal(path)
        if thr is None:
            return recorded
        n = self.review.normal_count()
        if self.detector is not None and self.state.scored_by is self.detector:
            self.detector.threshold = thr
        self.state.model_source = f"re-calibrated with {n} image{'s' if n != 1 else ''} marked normal"
        self._apply_threshold(None, thr)
        self.review_changed.emit()
        return True

    def verdict_curves(self, recall: float = 0.95):
        """ROC / precision-recall of the shown run from the inspector's OK / NG verdicts, and the
        threshold that flags ``recall`` of the NG images: ``(curves | None, suggestion | None, why)``."""
        return self.review.curves(self.result, recall)

    def export_report(self, out: str | os.PathLike) -> bool:
        """Write the HTML report of the session's run shown (:func:`core.session.report.write_report`)
        to the file ``out`` (the caller asks before replacing it)."""
        if self._refuse_if_busy():
            return False
        self.operation += 1
        return self.exports.report(self.session, self.run_id, out)

    # ================================================================ export
    def export_targets(self, kind: str, out_dir: str | os.PathLike) -> list[Path]:
        """Files an export of ``kind`` into ``out_dir`` would replace."""
        return self.exports.targets(self.result, kind, out_dir)

    def export(self, kind: str, out_dir: str | os.PathLike) -> bool:
        """Write ``kind`` ('flagged', 'heatmaps' or 'results') of the complete scan into ``out_dir``.

        The caller asks before replacing files (see :meth:`export_targets`)."""
        if kind not in EXPORT_KINDS:
            raise ValueError(f"unknown export kind {kind!r}")
        if self._refuse_if_busy():
            return False
        if self.result is not None:
            self.operation += 1
        return self.exports.export(kind, out_dir, self.result, self.map_range)
