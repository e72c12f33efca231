"""What the window shows and the long work behind it, without any widget.

The controller holds the open folder, the current detector and the good folder; the results
shown and the threshold in force live in a :class:`~app.view_state.ViewState`, the jobs in a
:class:`~app.job_tracker.JobTracker`, and the work itself in the Qt-free functions of
:mod:`app.workers`. Every piece of slow work (listing a folder, decoding thumbnails and images,
training, scoring, saving, loading, exporting) is a job; the views only listen to the
controller's signals and call its methods, so it is driven in tests without a window
(``tests/app/test_controller.py``).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QTimer, Signal

from app.job_tracker import JobTracker
from app.view_state import ViewState
from app.workers import (
    EXPORT_KINDS,
    FolderInfo,
    anchored_scale,
    decode_thumbnails,
    export_targets,
    list_folder,
    read_outline,
    to_uint8,
    write_export,
)
from core.data.images import ImageSource, read_image
from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.registry import REGISTRY, create_detector, load_model, make_config
from core.engine.jobs import CallableJob, FitJob, FitOutcome, ScanJob
from core.engine.qt_bridge import JobRunner
from core.engine.session_scan import scan_into_session
from core.engine.workflows import TrainReport
from core.grouping import GroupingError
from core.io.colormap import robust_range
from core.metrics.curves import threshold_for_recall, verdict_curves
from core.results import ScanResult, ScanRow, move_to_group, regroup
from core.results.threshold import DEFAULT_FPR, Threshold, calibrate
from core.runtime.device import describe_device, resolve_device
from core.session import ReviewBand, ReviewStatus, Session, SessionError, default_session_path, open_session
from core.session.report import write_report

__all__ = ["EXPORT_KINDS", "Controller", "FolderInfo"]

RANGE_SAMPLE = 256  # maps a heat-map scale estimate looks at while a scan runs
RANGE_INTERVAL = 1.0  # seconds between such estimates



# ------------------------------------------------------------------ the controller
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

    def __init__(self, runner: Optional[JobRunner] = None, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs = JobTracker(runner, self)
        self.runner = self.jobs.runner
        self.state = ViewState()
        self.folder: Optional[FolderInfo] = None
        self.source: Optional[ImageSource] = None
        self.good_folder: Optional[Path] = None
        self.detector: Optional[Detector] = None
        self.skipped: dict[Path, str] = {}
        self.last_export_dir: Optional[Path] = None
        self.operation = 0  # counts the user's commands; a scan that follows training is the same one
        self._scan_detector: Optional[Detector] = None  # the model of the scan under way
        self._stale = ""
        self._range_dirty = False
        self._range_time = -1e9
        self._range_timer = QTimer(self)
        self._range_timer.setSingleShot(True)
        self._range_timer.timeout.connect(self._request_map_range)
        #: Whether opening a folder opens its session (the window's default; a bare controller in
        #: tests of other rooms works without one).
        self.use_sessions = True
        self.session: Optional[Session] = None
        self.run_id: Optional[int] = None  # the session's run shown (None: not stored)
        self.band: Optional[ReviewBand] = None
        self._session_file: Optional[Path] = None  # a session file to open with the next folder
        self._pending_session: Optional[Session] = None
        self._source_before_restore: Optional[str] = None
        self._verdicts: dict[str, str] = {}
        self._notes: dict[str, str] = {}
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
        self._range_timer.stop()
        done = self.jobs.shutdown(timeout_ms)
        if done:
            self._close_session()
        return done

    # ================================================================ shown state (see ViewState)
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

    def log(self, level: str, message: str) -> None:
        self.logged.emit(level, message)

    def _refuse_if_busy(self) -> bool:
        if self.busy:
            self.log("warning", f"Busy: {self.busy_title}. Wait for it or press Cancel.")
            return True
        return False

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
        path = Path(folder).expanduser()
        inc, exc = tuple(include), tuple(exclude)
        self._submit(CallableJob(lambda p, c, e: list_folder(path, recursive, inc, exc), title=f"Listing {path}"), "list",
                     self._folder_listed,
                     on_failure=lambda msg, tb: self.log("error", f"Cannot open folder: {msg}"))

    def _folder_listed(self, info: FolderInfo) -> None:
        if self.scanning:  # a scan started while the listing ran: keep the folder it scans
            self.log("warning", f"Not opening {info.folder}: a scan is running.")
            return
        self.folder, self.source = info, ImageSource(info.paths)
        self.skipped = {}
        self._set_result(None)
        self.state.previous = None
        self._open_session(info.folder)
        where = " (including subfolders)" if info.recursive else ""
        filters = "; ".join([*(f"only {p}" for p in info.include), *(f"not {p}" for p in info.exclude)])
        where += f" [{filters}]" if filters else ""
        if info.paths:
            self.log("info", f"Opened {info.folder}{where}: {len(info.paths)} images"
                             + (f"; {info.left_out}" if info.left_out else ""))
        else:
            self.log("warning", f"{info.folder} holds no image files (png, jpg, bmp, tif, webp)")
        self.folder_opened.emit(info)
        self.skipped_changed.emit(0)
        if info.paths:
            self._submit(CallableJob(lambda p, c, e, ps=list(info.paths): decode_thumbnails(ps, p, c, e),
                                     title="thumbnails"), "thumbnails", lambda _n: None,
                         on_partial=self._thumbs_decoded)
        self._restore_latest_run()

    def _thumbs_decoded(self, partials: list) -> None:
        bad = [(i, reason) for i, thumb, reason in partials if thumb is None]
        for i, reason in bad:
            self._note_skipped(self.folder.paths[i], reason)
        if bad:
            self.skipped_changed.emit(len(self.skipped))
        self.thumbnails_arrived.emit(partials)

    def _note_skipped(self, path: Path, reason: str) -> None:
        if path not in self.skipped:
            self.skipped[path] = reason
            self.log("warning", f"Skipped {path}: {reason}")

    def load_image(self, path: Path) -> None:
        """Decode one image in full for the image view (only the latest request counts)."""
        row, s, rid = self.row_for(path), self.session, self.run_id
        # a restored run whose maps are still on their way: this one's map comes with the image
        want_map = row is not None and row.anomaly_map is None and s is not None and rid is not None

        def loaded(out) -> None:
            arr, outline, m = out
            if want_map and m is not None and row.anomaly_map is None and self.row_for(path) is row:
                row.anomaly_map = m
            self.image_loaded.emit(path, arr)
            self.outline_loaded.emit(path, outline)

        self._submit(CallableJob(lambda p, c, e: (to_uint8(read_image(path)), read_outline(path),
                                                  s.load_map(path, rid) if want_map else None),
                                 title=f"Reading {path.name}"), "image", loaded,
                     on_failure=lambda msg, tb: self.image_failed.emit(path, msg))

    def set_good_folder(self, folder: Optional[str | os.PathLike]) -> None:
        """The folder trained on: always the one the window shows, usable or not (see
        :meth:`good_folder_problem`)."""
        self.good_folder = Path(folder).expanduser() if folder else None

    def good_folder_problem(self) -> str:
        """Why the good folder cannot be trained on ("" when it can)."""
        g = self.good_folder
        if g is None:
            return "no folder of good images chosen"
        if not g.exists():
            return f"good-image folder not found: {g}"
        if not g.is_dir():
            return f"good-image path is not a folder: {g}"
        return ""

    # ================================================================ detector
    def detector_matches(self, name: str, overrides: dict, fpr: Optional[float] = None) -> bool:
        """Whether the current detector is ``name`` with exactly these settings (and, given
        ``fpr``, a threshold calibrated at that false-positive rate)."""
        det = self.detector
        if det is None or det.name != name:
            return False
        thr = det.threshold
        if fpr is not None and thr is not None and thr.method == "calibrated" and abs((thr.fpr or 0.0) - fpr) > 1e-12:
            return False
        try:
            return det.config == make_config(name, overrides)
        except ConfigError:
            return False

    def set_detector(self, detector: Optional[Detector], source: str = "") -> None:
        """Make ``detector`` the model in memory (``source``: where it came from, for the
        threshold's provenance). Its threshold is the one in force from now on, for the shown
        results too (which are marked as a previous run until it scores them)."""
        self.detector = detector
        self.state.model_source = source
        self._source_before_restore = None
        self.state.apply_threshold(None, detector.threshold if detector is not None else None)
        self.detector_changed.emit(detector)
        self.threshold_changed.emit(self.threshold)
        self._sync_stale()
        self._request_map_range()

    def train(self, name: str, overrides: Optional[dict] = None, fpr: float = DEFAULT_FPR, device: str = "auto",
              then_scan: bool = False) -> bool:
        """Train a fresh ``name`` detector on the good folder; a zero-shot one is only built."""
        if self._refuse_if_busy():
            return False
        if not then_scan:
            self.operation += 1
        overrides = dict(overrides or {})
        try:
            make_config(name, overrides)
            cls = REGISTRY[name]
        except (ConfigError, KeyError) as exc:
            self.log("error", f"Settings not valid: {exc}")
            return False
        ok, reason = cls.availability()
        if not ok:
            self.log("error", f"{name} is unavailable here: {reason}")
            return False
        if cls.zero_shot:
            job = CallableJob(lambda p, c, e: FitOutcome(create_detector(name, overrides, device),
                                                         TrainReport(0, 0, None, [], 0.0)),
                              title=f"Preparing {name}")
        else:
            if self.good_folder is None:
                self.log("error", f"{name} learns from good images: choose the folder of good (defect-free) parts "
                                  "under 'Good images' in the Detector panel first, or open a saved model.")
                return False
            problem = self.good_folder_problem()
            if problem:
                self.log("error", f"Cannot train {name}: {problem}")
                return False
            job = FitJob(name, self.good_folder, overrides=overrides, device=device, fpr=fpr)
        self._submit(job, "fit", lambda out: self._fitted(out, then_scan), main=True,
                     on_failure=lambda msg, tb: self.log("error", f"Training failed: {msg}"),
                     on_cancel=lambda: self.log("warning", "Training cancelled; the previous model is kept."))
        return True

    def _fitted(self, outcome: FitOutcome, then_scan: bool) -> None:
        rep = outcome.report
        for s in rep.skipped:
            self.log("warning", f"Skipped good image {s.path}: {s.reason}")
        det = outcome.detector
        if det.zero_shot:
            self.log("info", f"{det.name} set up: zero-shot, so it needs no good images; whatever it learns, it "
                             "learns from the batch while it scans")
            source = ""
        else:
            thr = rep.threshold.describe() if rep.threshold else "no threshold"
            self.log("info", f"Trained {det.name} on {rep.n_train} good images in {rep.fit_seconds:.1f} s; {thr}")
            source = "trained now"
        self.set_detector(det, source)
        if then_scan:
            self._start_scan()

    def run(self, name: str, overrides: Optional[dict] = None, fpr: float = DEFAULT_FPR, device: str = "auto") -> bool:
        """Score the open folder; trains first when no model fits the chosen settings."""
        if self._refuse_if_busy():
            return False
        if self.source is None or len(self.source) == 0:
            self.log("error", "Open a folder of images to scan first (File > Open folder…).")
            return False
        self.operation += 1
        overrides = dict(overrides or {})
        if self.detector_matches(name, overrides, fpr):
            self._start_scan()
            return True
        started = self.train(name, overrides, fpr, device, then_scan=True)
        if started and not REGISTRY[name].zero_shot:
            self.log("info", f"No {name} model trained with these settings yet: training on {self.good_folder} first.")
        return started

    def save_model(self, folder: str | os.PathLike, store_hand_threshold: bool = False) -> bool:
        """Save the model in memory. With a threshold set by hand in force, ``store_hand_threshold``
        saves that one (the model records it as set by hand); otherwise the model keeps its own
        and the log says the hand-set one was not saved."""
        if self._refuse_if_busy():
            return False
        det = self.detector
        if det is None or not det.fitted:
            self.log("error", "No trained model to save: train one or open a saved model first.")
            return False
        self.operation += 1
        out = Path(folder)
        hand, before = self.threshold_override, det.threshold
        if hand is not None and store_hand_threshold:
            det.threshold = dataclasses.replace(hand, settings=det.config.to_dict())

        def saved(path) -> None:
            self.log("info", f"Saved {det.name} model to {path}; {det.threshold.describe() if det.threshold else ''}")
            if hand is None:
                return
            if store_hand_threshold:  # the model holds it now: it is the model's threshold
                self.state.model_source = f"saved with the model {out.name}"
                self.state.threshold_override = None
                self.threshold_changed.emit(self.threshold)
            else:
                self.log("warning", f"The hand-set threshold {hand.value:.6g} was not saved with the model; the "
                                    f"saved model keeps {before.describe() if before else 'no threshold'}.")

        def failed(msg: str, _tb: str) -> None:
            det.threshold = before
            self.log("error", f"Could not save the model: {msg}")

        self._submit(CallableJob(lambda p, c, e: det.save(out), title=f"Saving model to {out}"), "save",
                     saved, main=True, on_failure=failed)
        return True

    def open_model(self, folder: str | os.PathLike, device: str = "auto") -> bool:
        if self._refuse_if_busy():
            return False
        src = Path(folder)
        self.operation += 1
        self._submit(CallableJob(lambda p, c, e: load_model(src, device), title=f"Loading model {src}"), "load",
                     lambda det: self._model_loaded(det, src), main=True,
                     on_failure=lambda msg, tb: self.log("error", f"Could not open the model: {msg}"))
        return True

    def _model_loaded(self, det: Detector, src: Path) -> None:
        thr = det.threshold.describe() if det.threshold else "no threshold"
        self.log("info", f"Opened {det.name} model from {src} (runs on {det.runtime}); {thr}")
        self.set_detector(det, f"from the model {src.name}")

    # ================================================================ scanning
    def rows(self) -> list[ScanRow]:
        """The rows shown now: the complete result, or the rows of the scan in progress."""
        return self.state.rows()

    def row_for(self, path: Path) -> Optional[ScanRow]:
        return self.state.row_for(path)

    @property
    def threshold(self) -> Optional[Threshold]:
        return self.state.threshold(self.detector.threshold if self.detector is not None else None)

    @property
    def threshold_source(self) -> str:
        """Where the threshold in force came from, in words (shown beside it everywhere)."""
        return self.state.threshold_source(self.detector.threshold if self.detector is not None else None)

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

    def _set_result(self, result: Optional[ScanResult]) -> None:
        self._range_timer.stop()
        self.jobs.drop_helper("range")  # an estimate under way is superseded
        self.state.set_result(result, self.state.scored_by)  # the scorer was recorded when the scan ended
        self.result_changed.emit(result)
        self._sync_stale()
        self._request_map_range()

    def _start_scan(self) -> None:
        det = self.detector
        if self._source_before_restore is not None:  # the threshold comes from the model in memory again
            self.state.model_source, self._source_before_restore = self._source_before_restore, None
        self.state.begin_scan()
        self._scan_detector = det
        session = self.session if self.session is not None and not self.session.read_only else None
        if session is not None:  # incremental: only new or changed images are scored
            src, thr = self.source, self.threshold_override
            job = CallableJob(lambda p, c, e: scan_into_session(session, det, src, threshold=thr, progress=p,
                                                                cancel=c, on_row=lambda i, row: e((i, row)),
                                                                keep_extras=True),
                              title=f"Scoring {len(src)} images with {det.name} into the session")
            done = self._scanned_into_session
        else:
            job, done = ScanJob(det, self.source, threshold=self.threshold_override, keep_extras=True), self._scanned
        self.run_id = None
        self._submit(job, "scan", done, main=True, on_partial=self._scan_rows,
                     on_failure=lambda msg, tb: self._scan_ended(f"Scan failed: {msg}", "error"),
                     on_cancel=lambda: self._scan_ended("Scan cancelled", "warning"))
        self.scan_started.emit(len(self.source))

    def _scan_rows(self, partials: list) -> None:
        rows = [row for _i, row in partials]
        self.state.add_rows(rows)
        self.rows_arrived.emit(rows)
        self._request_map_range()

    def _scanned(self, result: ScanResult) -> None:
        for s in result.skipped:
            self._note_skipped(Path(s.path), s.reason)
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

    def _scanned_into_session(self, out) -> None:
        self.run_id = out.run_id
        if self.threshold_override is not None and self.session is not None and out.run_id is not None:
            self._store_threshold(self.threshold_override.value, "set by hand")
        self._scanned(out.result)
        self.log("info", f"Session run {out.run_id}: {out.describe()} ({self.session.path})")
        self.review_changed.emit()

    def _scan_ended(self, what: str, level: str) -> None:
        """A scan that did not complete: its partial rows are discarded, never shown as final."""
        n, prev = self.state.abandon_scan()
        self._set_result(prev)
        tail = "showing the previous complete scan" if prev is not None else "no results are shown"
        self.log(level, f"{what}: {n} partial scores discarded; {tail}.")

    def _request_map_range(self) -> None:
        """Recompute the batch-wide heat-map scale off the UI thread, one job at a time.

        While a scan runs the scale is estimated from at most ``RANGE_SAMPLE`` maps, at most
        once a second; the complete result gets the scale of all its maps (the one exports use).
        """
        if self.jobs.helper_running("range"):
            self._range_dirty = True
            return
        rows = [r for r in self.rows() if r.anomaly_map is not None]
        if not rows:
            return
        if self.result is None:  # a scan in progress: a quick estimate, not too often
            wait = RANGE_INTERVAL - (time.monotonic() - self._range_time)
            if wait > 0:
                self._range_dirty = True
                self._range_timer.start(int(wait * 1000) + 1)
                return
            rows = rows[:: max(1, len(rows) // RANGE_SAMPLE)]
        self._range_dirty = False
        self._range_time = time.monotonic()
        maps, scores, anchor_at = [r.anomaly_map for r in rows], [r.score for r in rows], self._anchor_score()

        def work(p, c, e):
            rng = robust_range(maps)
            return rng, anchored_scale(scores, maps, anchor_at)

        self._submit(CallableJob(work, title="heat-map scale"), "range", self._range_computed)

    def _anchor_score(self) -> Optional[float]:
        """The score the heat maps are anchored at: the threshold in force, or for a grouped
        zero-shot scan the boundary between its groups."""
        if self.threshold is not None:
            return self.threshold.value
        res = self.result
        if res is not None and res.grouping is not None:
            normal = [r.score for r in res.rows if not r.flagged]
            suspect = [r.score for r in res.rows if r.flagged]
            if normal and suspect:
                return (max(normal) + min(suspect)) / 2.0
        return None

    def _range_computed(self, out) -> None:
        rng, scale = out
        self.state.map_range = (float(rng[0]), float(rng[1]))
        self.state.heat_scale = scale
        self.map_range_changed.emit(*self.map_range)
        self.heat_scale_changed.emit(scale)
        if self._range_dirty and not self._range_timer.isActive():
            self._request_map_range()

    # ================================================================ threshold
    def recalibrate(self, fpr: float) -> bool:
        """Re-calibrate the model's threshold at the target false-positive rate ``fpr`` on the
        held-out good scores it keeps (as ``scan --model M --fpr F`` does): no retraining and no
        rescoring. Returns whether the threshold changed."""
        det = self.detector
        thr = det.threshold if det is not None else None
        if det is None or det.zero_shot or thr is None or thr.method != "calibrated":
            return False
        if thr.fpr is not None and abs(thr.fpr - fpr) < 1e-12:
            return False
        if self.busy_kind in ("fit", "scan"):
            self.log("warning", "Busy: the target FPR applies once the running task has ended.")
            return False
        if not thr.calibration_scores:
            self.log("warning", "This model keeps no held-out scores to re-calibrate on: retrain it for a new FPR.")
            return False
        new = calibrate(thr.calibration_scores, fpr)
        new.settings = thr.settings
        det.threshold = new
        if not self.state.model_source.startswith("re-calibrated"):
            self.state.model_source = f"re-calibrated without retraining ({self.state.model_source or 'this model'})"
        self.log("info", f"Re-calibrated {det.name} at FPR {fpr:g}: {new.describe()}"
                         + ("; the threshold set by hand stays in force" if self.threshold_override else ""))
        if self.threshold_override is None:
            self._apply_threshold(None, new)
        return True

    def set_threshold(self, value: float) -> None:
        """Set the decision threshold by hand; every shown row is re-flagged."""
        self._apply_threshold(Threshold.explicit(float(value)))
        self._store_threshold(float(value), "set by hand")
        rows = self.rows()
        self.log("info", f"Threshold set by hand to {value:.6g}: {sum(bool(r.flagged) for r in rows)} of "
                         f"{len(rows)} flagged")

    def reset_threshold(self) -> None:
        """Back to the detector's calibrated threshold."""
        thr = self.detector.threshold if self.detector is not None else None
        if thr is None and self.run_id is not None and self.session is not None:
            thr = self.session.run(self.run_id).threshold  # a restored run: its own threshold
        self._apply_threshold(None, thr)
        if thr is not None:
            self._store_threshold(thr.value, "reset")
        self.log("info", f"Threshold reset: {thr.describe() if thr else 'no threshold'}")

    def _apply_threshold(self, override: Optional[Threshold], fallback: Optional[Threshold] = None) -> None:
        self.threshold_changed.emit(self.state.apply_threshold(override, fallback))
        self._request_map_range()  # the anchored scale follows the threshold

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
        self._decide(lambda s: s.move_to_group(res.rows[index].path, group))
        self.log("info", f"Moved {Path(path).name} to the {group} group ({res.grouping.describe()})")
        self.grouping_changed.emit(res)
        return True

    # ================================================================ session and review
    def _open_session(self, folder: Path) -> None:
        """Open (or create) the session of ``folder``: the one asked for by :meth:`open_session_file`,
        else the app's own for that folder. Another process writing it: opened read-only."""
        pending, self._pending_session = self._pending_session, None
        self._close_session()
        if pending is not None and (pending.folder is None or pending.folder.resolve() != folder.resolve()):
            pending.close()
            pending = None
        if pending is None and not self.use_sessions:
            return
        try:
            s = pending or open_session(default_session_path(folder), folder=folder, mode="auto")
        except (SessionError, OSError) as exc:
            self.log("error", f"Cannot open the session of {folder}: {exc}. Results will not be kept.")
            return
        self.session = s
        self._verdicts = {str(p): d.value for p, d in s.verdicts().items()}
        self._notes = {str(p): d.value for p, d in s.notes().items()}
        if s.read_only:
            self.log("warning", f"Session {s.path} is read-only ({s.read_only_reason}): decisions are not recorded.")
        self.session_changed.emit(s)

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self.run_id, self.band = None, None, None
        self._verdicts, self._notes = {}, {}
        self.session_changed.emit(None)

    def _restore_latest_run(self) -> None:
        s = self.session
        runs = s.runs() if s is not None else []
        if not runs:
            return
        run = runs[-1]
        # Scores, flags and decisions first (a fraction of a second for thousands of images); the
        # heat maps follow off the UI thread (:meth:`_load_restored_maps`), the one on screen at once.
        self._submit(CallableJob(lambda p, c, e: s.load_run(run.id), title=f"Restoring session run {run.id}"),
                     "restore", lambda res: self._restored(s, run, res), main=True,
                     on_failure=lambda msg, tb: self.log("error", f"Cannot restore session run {run.id}: {msg}"))

    def _restored(self, s: Session, run, result: ScanResult) -> None:
        if self.session is not s:  # another folder was opened meanwhile
            return
        self.run_id = run.id
        self.state.previous = None
        self.state.threshold_override = None
        if result.threshold is not None and run.threshold is not None and result.threshold.value != run.threshold.value:
            self.state.threshold_override = result.threshold  # a threshold the inspector changed, kept in the session
        if self._source_before_restore is None:  # the model in memory's own provenance, back at the next scan
            self._source_before_restore = self.state.model_source
        self.state.model_source = f"session run {run.id} of {run.finished_at[:16]}"
        self.band = s.review_band(run.id)
        self._set_result(result)
        self.threshold_changed.emit(self.threshold)
        self.log("info", f"Restored {run.describe()}; {self.threshold_source}; {len(self._verdicts)} verdicts")
        self.session_restored.emit({**s.ui_state(), "run_detector": run.detector, "run_settings": run.settings})
        self.review_changed.emit()
        self._load_restored_maps(s, run.id, result)

    def _load_restored_maps(self, s: Session, run_id: int, result: ScanResult) -> None:
        """Decode a restored run's heat maps in a helper job; they join the rows (and the
        batch-wide heat-map scale is computed) when all are in."""
        paths = [r.path for r in result.rows]

        def work(p, c, e):
            maps = []
            for i, path in enumerate(paths):
                c.raise_if_cancelled()
                maps.append(s.load_map(path, run_id))
                if i % 64 == 63:
                    p(i + 1, len(paths), "heat maps")
            return maps

        def loaded(maps: list) -> None:
            if self.result is not result:  # another run or folder is shown now
                return
            for row, m in zip(result.rows, maps):
                if row.anomaly_map is None:
                    row.anomaly_map = m
            self._request_map_range()
            self.maps_restored.emit()

        self._submit(CallableJob(work, title="heat maps of the restored run"), "maps", loaded)

    def open_session_file(self, path: str | os.PathLike, folder: Optional[str | os.PathLike] = None) -> bool:
        """Open a session file (e.g. one written by ``scan --session`` on a server) and its folder;
        ``folder`` where its images are on this machine (default: the folder it records)."""
        if self._refuse_if_busy():
            return False
        try:
            s = open_session(path, folder=folder, mode="auto", create=False)
        except (SessionError, OSError) as exc:
            self.log("error", f"Cannot open the session: {exc}")
            return False
        if s.folder is None or not s.folder.is_dir():
            self.log("error", f"The images of session {s.path} are not here ({s.folder}): open it giving their folder.")
            s.close()
            return False
        self._pending_session = s
        self.open_folder(s.folder)
        return True

    def save_session_as(self, dest: str | os.PathLike) -> bool:
        """Copy the open session to ``dest`` (replaced; the caller asks first) and go on in the copy."""
        s, dest = self.session, Path(dest).expanduser()
        if s is None or self.folder is None:
            self.log("error", "No session is open: open a folder first.")
            return False
        if self._refuse_if_busy():
            return False
        if dest.exists() and dest.resolve() == s.path.resolve():
            return True
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.unlink(missing_ok=True)
            out = sqlite3.connect(str(tmp))
            try:
                s.conn.backup(out)
            finally:
                out.close()
            os.replace(tmp, dest)
            for side in ("-wal", "-shm"):
                Path(str(dest) + side).unlink(missing_ok=True)
            copy = open_session(dest, folder=self.folder.folder, mode="auto", create=False)
        except (OSError, sqlite3.Error, SessionError) as exc:
            self.log("error", f"Could not save the session to {dest}: {exc}")
            return False
        run_id, band = self.run_id, self.band
        self._close_session()
        self.session, self.run_id, self.band = copy, run_id, band
        self._verdicts = {str(p): d.value for p, d in copy.verdicts().items()}
        self._notes = {str(p): d.value for p, d in copy.notes().items()}
        self.session_changed.emit(copy)
        self.log("info", f"Session saved as {dest}; decisions now go there.")
        return True

    def unsaved(self) -> str:
        """What opening another folder or closing would lose, in words ("" when nothing)."""
        if self.result is None:
            return ""
        what = f"the results of {self.result.detector} on {len(self.result.rows)} images"
        if self.session is None:
            return f"{what} (no session is open to keep them)"
        if self.session.read_only:
            return f"{what} (the session is read-only: {self.session.read_only_reason})"
        if self.run_id is None:
            return f"{what} (not stored in the session)"
        return ""

    def remember(self, key: str, value) -> None:
        """Front-end state (sort, filter, selection, detector) kept in the session for reopening."""
        s = self.session
        if s is not None and not s.read_only:
            s.set_ui_state(key, value)

    def _decide(self, fn) -> bool:
        """Record one decision in the session (committed at once); False, said in the log, when it cannot be."""
        s = self.session
        if s is None:
            self.log("warning", "No session is open: this decision is not kept.")
            return False
        if s.read_only:
            self.log("warning", f"The session is read-only ({s.read_only_reason}): this decision is not recorded.")
            return False
        fn(s)
        return True

    @staticmethod
    def _on_image(s: Session, path: Path, fn) -> None:
        try:
            fn()
        except SessionError:  # an image the session has not seen yet (no run covered it)
            s.sync_images([path])
            fn()

    def _name(self, path: Path) -> str:
        """``path`` relative to the open folder (subfolders keep files of the same name apart)."""
        root = self.folder.folder if self.folder is not None else None
        return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name

    def verdict(self, path: Path) -> Optional[str]:
        return self._verdicts.get(str(path))

    def verdicts(self) -> dict[str, str]:
        """The inspector's verdicts, keyed by ``str(path)``."""
        return dict(self._verdicts)

    def note(self, path: Path) -> str:
        return self._notes.get(str(path), "")

    def set_verdict(self, path: Path, verdict: Optional[str]) -> bool:
        """OK / NG / unsure (``None`` clears) for ``path``; committed to the session at once."""
        path = Path(path)
        if not self._decide(lambda s: self._on_image(s, path, lambda: s.set_verdict(path, verdict))):
            return False
        if verdict is None:
            self._verdicts.pop(str(path), None)
        else:
            self._verdicts[str(path)] = verdict
        self.log("info", f"{self._name(path)}: {verdict.upper() if verdict else 'verdict cleared'}")
        self.review_changed.emit()
        return True

    def set_note(self, path: Path, text: str) -> bool:
        path = Path(path)
        if text == self.note(path):
            return True
        if not self._decide(lambda s: self._on_image(s, path, lambda: s.set_note(path, text))):
            return False
        self._notes[str(path)] = text
        self.review_changed.emit()
        return True

    def set_review_band(self, low: Optional[float], high: Optional[float]) -> bool:
        """Two thresholds: at or below ``low`` passes, above ``high`` fails, between is to review
        (``None, None`` removes the band). Kept with the session's run shown."""
        if (low is None) != (high is None):
            raise ValueError("a review band needs both thresholds (or neither)")
        if low is not None and low > high:
            low, high = high, low
        if self.run_id is None:
            self.log("warning", "Run the detector first: the review band belongs to a stored run.")
            return False
        if not self._decide(lambda s: s.set_review_band(self.run_id, low, high)):
            return False
        self.band = None if low is None else ReviewBand(float(low), float(high))
        self.log("info", f"Review band: {low:.6g} .. {high:.6g}" if low is not None else "Review band removed")
        self.review_changed.emit()
        return True

    def review_queue(self) -> list[Path]:
        """Unreviewed images in the band or flagged, highest score first (the "to review" walk)."""
        if self.session is None or self.run_id is None or self.result is None:
            return []
        return self.session.review_queue(self.run_id, result=self.result)

    def review_status(self) -> Optional[ReviewStatus]:
        if self.session is None or self.run_id is None or self.result is None:
            return None
        return self.session.review_status(self.run_id, result=self.result)

    def mark_normal(self, path: Path) -> bool:
        """"This one is normal": the image joins the session's good set and the run's threshold is
        re-calibrated with it (no re-scoring)."""
        path, rid = Path(path), self.run_id
        if rid is None:
            self.log("warning", "Run the detector first: 'this one is normal' re-calibrates a stored run.")
            return False
        if not self._decide(lambda s: self._on_image(s, path, lambda: s.mark_normal(path))):
            return False
        try:
            thr = self.session.recalibrate_with_good_set(rid)
        except SessionError as exc:
            self.log("warning", f"{path.name} added to the good set; the threshold is unchanged: {exc}")
            return True
        n = len(self.session.good_set())
        if self.detector is not None and self.state.scored_by is self.detector:
            self.detector.threshold = thr
        self.state.model_source = f"re-calibrated with {n} image{'s' if n != 1 else ''} marked normal"
        self._apply_threshold(None, thr)
        self.log("info", f"{self._name(path)} marked normal; {thr.describe()}")
        self.review_changed.emit()
        return True

    def verdict_curves(self, recall: float = 0.95):
        """ROC / precision-recall of the shown run from the inspector's OK / NG verdicts, and the
        threshold that flags ``recall`` of the NG images: ``(curves | None, suggestion | None, why)``."""
        rows = self.result.rows if self.result is not None else []
        labelled = [(1 if self._verdicts[str(r.path)] == "ng" else 0, r.score) for r in rows
                    if self._verdicts.get(str(r.path)) in ("ok", "ng")]
        if not labelled:
            return None, None, "No OK / NG verdicts on this run yet."
        labels, scores = [y for y, _ in labelled], [s for _, s in labelled]
        curves = verdict_curves(labels, scores)
        suggestion = threshold_for_recall(labels, scores, recall)
        why = "" if curves is not None else "The curves need both OK and NG verdicts."
        return curves, suggestion, why

    def _store_threshold(self, value: float, reason: str) -> None:
        s = self.session
        if s is not None and not s.read_only and self.run_id is not None:
            s.set_threshold(self.run_id, value, reason)

    def export_report(self, out: str | os.PathLike) -> bool:
        """Write the HTML report of the session's run shown (:func:`core.session.report.write_report`)
        to the file ``out`` (the caller asks before replacing it)."""
        if self._refuse_if_busy():
            return False
        s, rid = self.session, self.run_id
        if s is None or rid is None:
            self.log("error", "No stored run to report on: run the detector on a folder with a session first.")
            return False
        self.operation += 1
        target = Path(out)
        self._submit(CallableJob(lambda p, c, e: write_report(s, target, rid), title=f"Writing report {target}"),
                     "export", lambda path: self._exported(Path(path).parent, f"the report {Path(path).name}"),
                     main=True, on_failure=lambda msg, tb: self.log("error", f"Report failed: {msg}"))
        return True

    # ================================================================ export
    def export_targets(self, kind: str, out_dir: str | os.PathLike) -> list[Path]:
        """Files an export of ``kind`` into ``out_dir`` would replace."""
        return export_targets(self.result.rows if self.result is not None else [], kind, Path(out_dir))

    def export(self, kind: str, out_dir: str | os.PathLike) -> bool:
        """Write ``kind`` ('flagged', 'heatmaps' or 'results') of the complete scan into ``out_dir``.

        The caller asks before replacing files (see :meth:`export_targets`)."""
        if kind not in EXPORT_KINDS:
            raise ValueError(f"unknown export kind {kind!r}")
        if self._refuse_if_busy():
            return False
        if self.result is None:
            self.log("error", "Nothing to export: run a complete scan first.")
            return False
        self.operation += 1
        out = Path(out_dir)
        result = dataclasses.replace(self.result, rows=[dataclasses.replace(r) for r in self.result.rows],
                                     skipped=list(self.result.skipped))
        value_range = self.map_range
        self._submit(CallableJob(lambda p, c, e: write_export(kind, out, result, value_range), title=f"Exporting {EXPORT_KINDS[kind]} to {out}"), "export",
                     lambda what: self._exported(out, what), main=True,
                     on_failure=lambda msg, tb: self.log("error", f"Export failed: {msg}"))
        return True

    def _exported(self, out: Path, what: str) -> None:
        self.last_export_dir = out
        self.log("info", f"Wrote {what} to {out}")
        self.exported.emit(str(out))

