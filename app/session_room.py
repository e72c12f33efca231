"""The open folder's session in the window: opening and closing it, restoring its latest run off
the UI thread (scores and decisions first, then the heat maps), opening a session file and saving
a copy. The session itself is :class:`~app.session_state.SessionState`'s and the decisions are
:class:`~app.review_state.ReviewState`'s (both plain Python); this room runs their jobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.job_tracker import JobTracker
from app.review_state import ReviewState
from app.session_state import LogFn, RestoredRun, SessionState, read_maps, read_run
from core.engine.jobs import CallableJob
from core.results import ScanResult
from core.session import Session


class SessionRoom(QObject):
    session_changed = Signal(object)  # the open Session or None
    restored = Signal(object)  # RestoredRun: the latest run of the session just opened, read
    maps_restored = Signal()  # the heat maps of the restored run are in its rows

    def __init__(self, jobs: JobTracker, sessions: SessionState, review: ReviewState, log: LogFn,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self.sessions, self.review, self.log = jobs, sessions, review, log

    def open_for(self, folder: Path) -> Optional[Session]:
        self.close()
        s = self.sessions.open_for(folder)
        self.review.root = folder
        if s is not None:
            self.review.load(s)
            self.session_changed.emit(s)
        return s

    def close(self) -> None:
        self.sessions.close()
        self.review.clear()
        self.session_changed.emit(None)

    def restore_latest(self, have_fingerprint: str) -> None:
        """Read the session's latest run as a main task (``restored`` follows); the model it was
        scored with is loaded unless it is the one in memory (``have_fingerprint``)."""
        s = self.sessions.session
        runs = s.runs() if s is not None else []
        if not runs:
            return
        run = runs[-1]
        self.jobs.submit(CallableJob(lambda p, c, e: read_run(s, run, have_fingerprint),
                                     title=f"Restoring session run {run.id}"), "restore",
                         lambda got: self.restored.emit(got) if self.sessions.session is got.session else None,
                         main=True, on_failure=lambda msg, tb: self.log("error", f"Cannot restore session run {run.id}: {msg}"))

    def load_maps(self, got: RestoredRun, shown: Callable[[ScanResult], bool]) -> None:
        """Decode the restored run's heat maps in a helper job; they join its rows while it is ``shown``."""
        s, run_id, result = got.session, got.run.id, got.result
        paths = [r.path for r in result.rows]

        def loaded(maps: list) -> None:
            if not shown(result):  # another run or folder is shown now
                return
            for row, m in zip(result.rows, maps):
                if row.anomaly_map is None:
                    row.anomaly_map = m
            self.maps_restored.emit()

        self.jobs.submit(CallableJob(lambda p, c, e: read_maps(s, run_id, paths, p, c), title="heat maps of the restored run"),
                         "maps", loaded)

    def save_as(self, dest: str | os.PathLike, folder: Optional[Path]) -> bool:
        """Copy the open session to ``dest`` (replaced; the caller asks first) and go on in the copy."""
        before = self.sessions.session
        if before is None or folder is None:
            self.log("error", "No session is open: open a folder first.")
            return False
        copy = self.sessions.save_as(dest, folder)
        if copy is None:
            return False
        if copy is not before:
            self.review.load(copy)
            self.session_changed.emit(copy)
        return True
