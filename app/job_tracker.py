"""Which jobs the window waits for: one *main* task and a few replaceable helpers.

The :class:`JobTracker` sits between the controller and the one
:class:`~core.engine.qt_bridge.JobRunner`. Each submitted job carries callbacks for its
outcome; the tracker calls the one that applies and drops the late signals of jobs that are no
longer current (a replaced helper, anything after :meth:`JobTracker.shutdown`).

Only one main task (training, scanning, model I/O, export) runs at a time; it has the progress
bar and the Cancel button. Helper jobs (folder listing, thumbnails, the full image, the heat-map
scale) run beside it, and a newer helper of the same kind replaces (and cancels) the older one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from PySide6.QtCore import QObject, Signal

from core.engine.jobs import Job
from core.engine.qt_bridge import JobRunner

_log = logging.getLogger(__name__)


@dataclass
class Track:
    """What to do when a job ends (or delivers partial results)."""

    kind: str
    main: bool
    title: str
    on_success: Callable[[Any], None]
    on_partial: Optional[Callable[[list], None]] = None
    on_failure: Optional[Callable[[str, str], None]] = None
    on_cancel: Optional[Callable[[], None]] = None


class JobTracker(QObject):
    busy_changed = Signal(str)  # title of the main task, "" when idle
    progressed = Signal(int, int, str)  # main task: done, total, message
    logged = Signal(str, str)  # level, message: outcomes with no handler of their own

    def __init__(self, runner: Optional[JobRunner] = None, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.runner = runner or JobRunner(self)
        self._tracks: dict[int, Track] = {}
        self._main_id: Optional[int] = None
        self._helper_ids: dict[str, int] = {}
        self._cancel_requested = False
        self.closed = False
        r = self.runner
        r.progressed.connect(self._on_progressed)
        r.emitted.connect(self._on_emitted)
        r.succeeded.connect(self._on_succeeded)
        r.failed.connect(self._on_failed)
        r.cancelled.connect(self._on_cancelled)
        r.finished.connect(self._on_finished)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._main_id is not None

    @property
    def main_track(self) -> Optional[Track]:
        return self._tracks.get(self._main_id) if self._main_id is not None else None

    @property
    def busy_title(self) -> str:
        t = self.main_track
        return t.title if t is not None else ""

    @property
    def busy_kind(self) -> str:
        t = self.main_track
        return t.kind if t is not None else ""

    @property
    def main_id(self) -> Optional[int]:
        return self._main_id

    @property
    def cancel_requested(self) -> bool:
        """Whether Cancel was asked of the main task now running."""
        return self.busy and self._cancel_requested

    def helper_running(self, kind: str) -> bool:
        return kind in self._helper_ids

    # ------------------------------------------------------------------ commands
    def submit(self, job: Job, kind: str, on_success: Callable[[Any], None], *, main: bool = False,
               on_partial=None, on_failure=None, on_cancel=None) -> int:
        """Run ``job``; returns its id (0 when nothing starts because the tracker is shut down)."""
        if self.closed:  # after shutdown nothing new starts (e.g. from a handler still running)
            return 0
        if not main:
            self.drop_helper(kind)
        jid = self.runner.submit(job)
        self._tracks[jid] = Track(kind, main, job.title, on_success, on_partial, on_failure, on_cancel)
        if main:
            self._main_id = jid
            self._cancel_requested = False
            self.busy_changed.emit(job.title)
        else:
            self._helper_ids[kind] = jid
        return jid

    def drop_helper(self, kind: str) -> None:
        """Forget (and cancel) the helper job of ``kind``; its late signals are ignored."""
        old = self._helper_ids.pop(kind, None)
        if old is not None:
            self._tracks.pop(old, None)
            self.runner.cancel(old)

    def cancel_main(self) -> bool:
        """Ask the main task to stop; returns whether one was running."""
        if self._main_id is None:
            return False
        self._cancel_requested = True
        self.runner.cancel(self._main_id)
        return True

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel every job and wait for their threads; nothing starts afterwards."""
        self.closed = True
        self._tracks.clear()
        self._helper_ids.clear()
        self._main_id = None
        return self.runner.shutdown(timeout_ms)

    # ------------------------------------------------------------------ runner signals
    def _claim(self, jid: int) -> Optional[Track]:
        track = self._tracks.pop(jid, None)
        if track is None:
            return None
        if track.main and self._main_id == jid:
            self._main_id = None
        elif self._helper_ids.get(track.kind) == jid:
            del self._helper_ids[track.kind]
        return track

    def _after(self, track: Track) -> None:
        if track.main and self._main_id is None:
            self.busy_changed.emit("")

    def _on_progressed(self, jid: int, done: int, total: int, msg: str) -> None:
        if jid == self._main_id:
            self.progressed.emit(done, total, msg)

    def _on_emitted(self, jid: int, partials: list) -> None:
        track = self._tracks.get(jid)
        if track is not None and track.on_partial is not None:
            track.on_partial(partials)

    def _on_succeeded(self, jid: int, result: object) -> None:
        track = self._claim(jid)
        if track is None:
            return
        try:
            track.on_success(result)
        finally:
            self._after(track)

    def _on_failed(self, jid: int, message: str, tb: str) -> None:
        track = self._claim(jid)
        if track is None:
            return
        _log.debug("%s job failed: %s\n%s", track.kind, message, tb)
        try:
            if track.on_failure is not None:
                track.on_failure(message, tb)
            else:
                self.logged.emit("error", message)
        finally:
            self._after(track)

    def _on_cancelled(self, jid: int) -> None:
        track = self._claim(jid)
        if track is None:
            return
        try:
            if track.on_cancel is not None:
                track.on_cancel()
            elif track.main:
                self.logged.emit("warning", f"{track.title or track.kind} cancelled")
        finally:
            self._after(track)

    def _on_finished(self, jid: int) -> None:
        self._tracks.pop(jid, None)  # e.g. a thread that ended without a verdict
