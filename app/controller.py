"""What the window shows and the long work behind it, without any widget.

The controller runs the slow work (listing a folder, decoding thumbnails and images, training,
scoring, saving, loading, exporting) as jobs of one :class:`~app.job_tracker.JobTracker` and
keeps each concern in a room of its own:

* plain Python, tested without a window (``tests/app/test_rooms.py``): the results and the
  threshold in force (:class:`~app.view_state.ViewState`), the model in memory and what it belongs
  to (:class:`~app.model_state.ModelState`), how the threshold changes
  (:class:`~app.threshold_keeper.ThresholdKeeper`), the folder's session
  (:class:`~app.session_state.SessionState`) and the inspector's decisions
  (:class:`~app.review_state.ReviewState`); every count comes from
  :func:`core.results.review.review_counts`;
* the rooms that run jobs: the folder (:mod:`app.folder_room`), training / saving / opening
  models (:mod:`app.model_room`), scanning and the heat-map scales (:mod:`app.scan_room`), the
  session's restore (:mod:`app.session_room`) and exports (:mod:`app.exports`).

What the views read and the signals they listen to are :class:`~app.controller_view.ControllerView`'s;
the commands are here. The controller is driven in tests without a window (``tests/app/test_controller.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject

from app.controller_view import ControllerView
from app.exports import Exports
from app.folder_room import FolderRoom
from app.heat_range import anchor_score
from app.job_tracker import JobTracker
from app.model_room import ModelRoom
from app.review_state import ReviewState
from app.scan_room import ScanRoom
from app.session_room import SessionRoom
from app.session_state import RestoredRun, SessionState
from app.threshold_keeper import ThresholdKeeper
from app.view_state import ViewState
from app.workers import EXPORT_KINDS, FolderInfo
from core.detectors.base import Detector
from core.detectors.registry import REGISTRY
from core.engine.jobs import CallableJob
from core.engine.qt_bridge import JobRunner
from core.results import ScanResult
from core.results.threshold import DEFAULT_FPR
from core.runtime.device import describe_device, resolve_device

__all__ = ["EXPORT_KINDS", "Controller", "FolderInfo"]


class Controller(ControllerView):
    """The commands of the window, over the rooms (see the module docstring); what the views read
    and the signals they listen to are :class:`~app.controller_view.ControllerView`'s."""

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
        self.scans = ScanRoom(self.jobs, self.state, self.log,
                              lambda: anchor_score(self.threshold.value if self.threshold else None, self.result), self)
        self.heat = self.scans.heat
        self.session_room = SessionRoom(self.jobs, self.sessions, self.review, self.log, self)
        self.thresholds = ThresholdKeeper(self.state, self.models, self.sessions, self.review,
                                          lambda title, text: self.ask(title, text), self.log)
        f = self.files
        f.listed.connect(self._folder_listed)
        for name in ("thumbnails_arrived", "image_loaded", "image_failed", "outline_loaded", "skipped_changed"):
            getattr(f, name).connect(getattr(self, name))
        self.model_room.ready.connect(self._model_ready)
        self.model_room.hand_threshold_saved.connect(self._hand_threshold_saved)
        self.exports.exported.connect(self.exported)
        sc = self.scans
        for name in ("scan_started", "rows_arrived", "result_changed", "map_range_changed", "heat_scale_changed"):
            getattr(sc, name).connect(getattr(self, name))
        sc.scanned.connect(self._scanned)
        self.session_room.session_changed.connect(self.session_changed)
        self.session_room.restored.connect(self._restored)
        self.session_room.maps_restored.connect(self._maps_restored)
        #: Asks the inspector a yes / no question (the window shows a dialog); the answer of a bare
        #: controller is no.
        self.ask: Callable[[str, str], bool] = lambda _title, _text: False
        self.operation = 0  # counts the user's commands; a scan that follows training is the same one
        self._stale = ""
        self._source_before_restore: Optional[str] = None
        for changed in (self.result_changed, self.threshold_changed, self.review_changed, self.grouping_changed,
                        self.rows_arrived):  # every count follows every change (one function: counts())
            changed.connect(self._recount)
        self.result_changed.connect(lambda _result: self._sync_stale())
        self.jobs.busy_changed.connect(self.busy_changed)
        self.jobs.busy_changed.connect(lambda _title: self._sync_stale())
        self.jobs.progressed.connect(self.progressed)
        self.jobs.logged.connect(self.logged)

    # ================================================================ job plumbing
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
            self.session_room.close()
        return done

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
        self.files.list(folder, recursive, include, exclude)

    def _folder_listed(self, info: FolderInfo) -> None:
        if self.scanning:  # a scan started while the listing ran: keep the folder it scans
            self.log("warning", f"Not opening {info.folder}: a scan is running.")
            return
        before = self.folder
        self.files.show(info)
        self.scans.show(None)
        self.state.previous = None
        self.session_room.open_for(info.folder)
        self.folder_opened.emit(info)
        self._restore_good_folder(before.folder if before is not None else None, info.folder)
        self.skipped_changed.emit(0)
        self.files.decode_thumbnails()
        self.session_room.restore_latest(self.models.fingerprint)

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

    def keep_good_folder(self) -> None:
        """The good-images folder shown is the open folder's: its session keeps it for reopening."""
        if self.folder is not None:
            self.sessions.set_good_folder(self.good_folder)

    def _restore_good_folder(self, before: Optional[Path], now: Path) -> None:
        s = self.session
        text = self.model_room.restore_good(s.good_folder() if s is not None else None, before, now)
        if text is None:
            self.keep_good_folder()
        else:
            self.good_folder_restored.emit(text)

    # ================================================================ the model
    def set_detector(self, detector: Optional[Detector], source: str = "", store: bool = False) -> None:
        """Make ``detector`` the model in memory (``source``: where it came from, for the
        threshold's provenance). Its threshold is the one in force from now on, for the shown
        results too (which are marked as a previous run until it scores them); with ``store``, the
        shown run's session records it."""
        self.models.bind(detector, self.folder.folder if self.folder else None, self.good_folder)
        self.state.model_source = source
        self._source_before_restore = None
        self.thresholds.adopt_model(detector, store, source)
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

    def run(self, name: str, overrides: Optional[dict] = None, fpr: float = DEFAULT_FPR, device: str = "auto") -> bool:
        """Score the open folder; trains first when no model fits the chosen settings."""
        if self._refuse_if_busy():
            return False
        if self.source is None or len(self.source) == 0:
            self.log("error", "Open a folder of images to scan first (File > Open folder…).")
            return False
        self.operation += 1
        overrides = dict(overrides or {})
        plan = self.model_room.decide_run(self.run_plan(name, overrides, fpr), self.folder.folder, self.ask)
        if plan is None:
            return False
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

    # ================================================================ scanning (ScanRoom runs it)
    def _start_scan(self) -> None:
        if self._source_before_restore is not None:  # the threshold comes from the model in memory again
            self.state.model_source, self._source_before_restore = self._source_before_restore, None
        self.sessions.run_id = None
        self.scans.start(self.detector, self.source, self.sessions.writable, self.state.hand_threshold,
                         self.models.trained_on())

    def _scanned(self, result: ScanResult, stored) -> None:
        """A complete scan: into the session (its threshold and band settled there first), then shown."""
        scorer = self.scans.detector
        if stored is not None:
            out, kept, why = stored
            if kept is not None and self.detector is scorer:
                self.models.fingerprint = kept.fingerprint
            if why:
                self.log("warning", f"{why[0].upper()}{why[1:]}")
            self.sessions.run_id = out.run_id
            if out.run_id is not None:
                self.thresholds.after_run(out.run_id, result, scorer)
                self.review.carry_band(out.run_id, result.detector)
        for s in result.skipped:
            self.files.note_skipped(Path(s.path), s.reason)
        self.skipped_changed.emit(len(self.skipped))
        self.scans.finish(result)
        thr = result.threshold.describe() if result.threshold else "no threshold"
        if result.grouping is not None:
            thr = f"groups by {result.grouping.describe()}"
        elif result.grouping_note:
            thr = f"not grouped: {result.grouping_note}"
        self.log("info", f"Scanned {len(result.rows)} images with {result.detector} in {result.seconds:.1f} s: "
                         f"{len(result.flagged)} flagged; {thr}; {len(result.skipped)} skipped")
        if stored is not None:
            self.log("info", f"Session run {stored[0].run_id}: {stored[0].describe()} ({self.session.path})")
            self.review_changed.emit()

    # ================================================================ threshold (ThresholdKeeper decides)
    def recalibrate(self, fpr: float) -> bool:
        """Re-calibrate the model's threshold at the target false-positive rate ``fpr`` on the
        held-out good scores it keeps: no retraining, no rescoring. Returns whether it changed."""
        return self._threshold_moved(self.thresholds.recalibrate(fpr, busy=self.busy_kind in ("fit", "scan")))

    def set_threshold(self, value: float, how: str = "set by hand") -> None:
        """Set the decision threshold by hand (``how``: e.g. "set from the verdict ROC at recall 0.95");
        every shown row is re-flagged."""
        self._threshold_moved(self.thresholds.set_by_hand(value, how) or True)

    def reset_threshold(self) -> None:
        """Back to the detector's calibrated threshold."""
        self._threshold_moved(self.thresholds.reset() or True)

    def _threshold_moved(self, changed: bool) -> bool:
        if changed:
            self.threshold_changed.emit(self.threshold)
            self.heat.request()  # the anchored scale follows the threshold
        return changed

    def _recount(self, *_args) -> None:
        self.counts_changed.emit(self.counts())

    # ================================================================ grouping (zero-shot scans; ReviewState edits)
    def regroup(self, method: str) -> bool:
        """Split the shown zero-shot scan again with ``method``; the session's hand moves stay on top."""
        seed = self.detector.config.seed if self.detector is not None else 0
        return self._regrouped(self.result is not None and not self.busy and self.review.regroup(self.result, method, seed))

    def move_to_group(self, path: Path, group: Optional[str] = None) -> bool:
        """Move the image at ``path`` to ``group`` ('normal' / 'suspect'; default: the other one)."""
        return self._regrouped(self.result is not None and not self.busy and self.review.move_to_group(self.result, path, group))

    def _regrouped(self, changed: bool) -> bool:
        if changed:
            self.grouping_changed.emit(self.result)
        return changed

    # ================================================================ session (SessionRoom runs it)
    def _restored(self, got: RestoredRun) -> None:
        """The latest run of the session just opened: shown with its threshold, band and model."""
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
        self.scans.show(result)
        self.threshold_changed.emit(self.threshold)
        self.log("info", f"Restored {run.describe()}; {self.threshold_source}; {len(self.review.verdicts())} verdicts")
        self.session_restored.emit(got.ui)
        self.review_changed.emit()
        self.session_room.load_maps(got, lambda shown: self.result is shown)

    def _maps_restored(self) -> None:
        self.heat.request()
        self.maps_restored.emit()

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
        if self.session is not None and self._refuse_if_busy():
            return False
        return self.session_room.save_as(dest, self.folder.folder if self.folder is not None else None)

    def remember(self, key: str, value) -> None:
        """Front-end state (sort, filter, selection, detector) kept in the session for reopening."""
        self.sessions.remember(key, value)

    # ================================================================ review
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

    def mark_normal(self, path: Path) -> bool:
        """"This one is normal": the image joins the session's good set and the run's threshold is
        re-calibrated with it (no re-scoring)."""
        recorded, moved = self.thresholds.mark_normal(path)
        self._threshold_moved(moved)
        if recorded:
            self.review_changed.emit()  # its tile is marked normal
        return recorded

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
