"""The one small QtCore bridge: run a plain-Python :class:`~core.engine.jobs.Job` on a QThread.

Only QtCore is imported here (no widgets); the rest of ``core`` stays Qt-free.

* A :class:`JobThread` subclasses ``QThread``; its ``run()`` calls the job directly, so there
  is no worker object moved between threads and nothing to deadlock on ``quit``/``wait``.
* Progress and partial results are buffered in the worker and delivered at most about ten
  times a second, as queued signals carrying the job id, so a late signal of an old job can
  be told apart and dropped.
* Cancel is cooperative (a :class:`CancelToken`); threads are never terminated.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Optional

from PySide6.QtCore import QObject, QThread, Signal

from core.engine.jobs import Job
from core.runtime.cancel import Cancelled, CancelToken

FLUSH_INTERVAL = 0.1  # seconds between progress / partial deliveries


class JobThread(QThread):
    progressed = Signal(int, int, int, str)  # job id, done, total, message
    emitted = Signal(int, list)  # job id, partial results since the last delivery
    succeeded = Signal(int, object)
    failed = Signal(int, str, str)  # job id, one-line message, traceback
    cancelled = Signal(int)

    def __init__(self, job_id: int, job: Job, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.job_id = job_id
        self.job = job
        self.token = CancelToken()
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._last_flush = 0.0
        self._last_progress: Optional[tuple[int, int, str]] = None

    # called in the worker thread -------------------------------------------------------
    def _progress(self, done: int, total: int, message: str = "") -> None:
        self._last_progress = (int(done), int(total), str(message))
        self._maybe_flush()

    def _emit(self, obj: Any) -> None:
        with self._lock:
            self._pending.append(obj)
        self._maybe_flush()

    def _maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < FLUSH_INTERVAL:
            return
        self._last_flush = now
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self.emitted.emit(self.job_id, pending)
        if self._last_progress is not None:
            self.progressed.emit(self.job_id, *self._last_progress)

    def run(self) -> None:  # noqa: D401 - QThread entry point
        try:
            result = self.job.run(self._progress, self.token, self._emit)
        except Cancelled:
            self._flush_partials_only()
            self.cancelled.emit(self.job_id)
            return
        except Exception as exc:  # reported to the UI, never raised into Qt
            self._flush_partials_only()
            self.failed.emit(self.job_id, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc),
                             traceback.format_exc())
            return
        if self.token.cancelled:
            self.cancelled.emit(self.job_id)
            return
        self._maybe_flush(force=True)
        self.succeeded.emit(self.job_id, result)

    def _flush_partials_only(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self.emitted.emit(self.job_id, pending)


class JobRunner(QObject):
    """Runs jobs on threads and re-emits their signals in the GUI thread.

    Signals carry the job id. ``finished`` fires after exactly one of ``succeeded``,
    ``failed`` or ``cancelled``.
    """

    started = Signal(int, str)  # job id, title
    progressed = Signal(int, int, int, str)
    emitted = Signal(int, list)
    succeeded = Signal(int, object)
    failed = Signal(int, str, str)
    cancelled = Signal(int)
    finished = Signal(int)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._threads: dict[int, JobThread] = {}
        self._next_id = 1

    def submit(self, job: Job) -> int:
        job_id = self._next_id
        self._next_id += 1
        t = JobThread(job_id, job)
        t.progressed.connect(self.progressed)
        t.emitted.connect(self.emitted)
        t.succeeded.connect(self.succeeded)
        t.failed.connect(self.failed)
        t.cancelled.connect(self.cancelled)
        # a bound slot, not a lambda: Qt drops the queued call if this runner is deleted first (a
        # lambda has no receiver and would reach a deleted runner: "Signal source has been deleted")
        t.finished.connect(self._thread_finished)
        self._threads[job_id] = t
        t.start()
        self.started.emit(job_id, getattr(job, "title", "job"))
        return job_id

    def _thread_finished(self) -> None:
        t = self.sender()
        job_id = getattr(t, "job_id", None)
        if job_id is None:
            return
        self._threads.pop(job_id, None)
        t.deleteLater()
        self.finished.emit(job_id)

    def settled(self) -> bool:
        """No job is running and every job's signals have reached the GUI thread (``finished``
        included). ``is_running`` turns False as soon as a thread's ``run`` returns, while its
        last signals may still wait in the event queue."""
        return not self._threads

    def is_running(self, job_id: Optional[int] = None) -> bool:
        if job_id is None:
            return any(t.isRunning() for t in self._threads.values())
        t = self._threads.get(job_id)
        return t is not None and t.isRunning()

    def running_ids(self) -> list[int]:
        return [jid for jid, t in self._threads.items() if t.isRunning()]

    def cancel(self, job_id: Optional[int] = None) -> None:
        """Ask one job (or all) to stop at their next check."""
        for jid, t in list(self._threads.items()):
            if job_id is None or jid == job_id:
                t.token.cancel()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel everything and wait for the threads (closing the window calls this)."""
        self.cancel()
        ok = True
        for t in list(self._threads.values()):
            ok = t.wait(timeout_ms) and ok
        return ok
