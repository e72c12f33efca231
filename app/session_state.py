"""The session of the open folder, as plain Python (no Qt): which file, which run is shown, and
what opening another folder or closing would lose.

The controller owns one :class:`SessionState`; the review decisions that go into the session
are :class:`~app.review_state.ReviewState`'s. Tested without a window in
``tests/app/test_rooms.py``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.detectors.base import Detector
from core.engine.session_model import load_kept_model
from core.io.checkpoint import CheckpointError
from core.results import ScanResult
from core.results.threshold import Threshold
from core.session import ModelRecord, ReviewBand, RunInfo, Session, SessionError, default_session_path, open_session

LogFn = Callable[[str, str], None]


class SessionState:
    def __init__(self, log: LogFn) -> None:
        self.log = log
        #: Whether opening a folder opens its session (the window's default; a bare controller in
        #: tests of other rooms works without one).
        self.enabled = True
        self.session: Optional[Session] = None
        self.run_id: Optional[int] = None  # the session's run shown (None: not stored)
        self.pending: Optional[Session] = None  # a session file to open with the next folder

    @property
    def writable(self) -> Optional[Session]:
        """The open session when decisions can be written to it, else None."""
        s = self.session
        return s if s is not None and not s.read_only else None

    def open_for(self, folder: Path) -> Optional[Session]:
        """Open (or create) the session of ``folder``: the one asked for by :meth:`open_file`, else
        the app's own for that folder. Another process writing it: opened read-only."""
        pending, self.pending = self.pending, None
        self.close()
        if pending is not None and (pending.folder is None or pending.folder.resolve() != folder.resolve()):
            pending.close()
            pending = None
        if pending is None and not self.enabled:
            return None
        try:
            s = pending or open_session(default_session_path(folder), folder=folder, mode="auto")
        except (SessionError, OSError) as exc:
            self.log("error", f"Cannot open the session of {folder}: {exc}. Results will not be kept.")
            return None
        self.session = s
        if s.read_only:
            self.log("warning", f"Session {s.path} is read-only ({s.read_only_reason}): decisions are not recorded.")
        return s

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self.run_id = None, None

    def open_file(self, path: str | os.PathLike, folder: Optional[str | os.PathLike] = None) -> Optional[Session]:
        """Open a session file (e.g. one written by ``scan --session`` on a server); it becomes the
        session of its folder when that folder is opened next. Returns it, or None (logged)."""
        try:
            s = open_session(path, folder=folder, mode="auto", create=False)
        except (SessionError, OSError) as exc:
            self.log("error", f"Cannot open the session: {exc}")
            return None
        if s.folder is None or not s.folder.is_dir():
            self.log("error", f"The images of session {s.path} are not here ({s.folder}): open it giving their folder.")
            s.close()
            return None
        self.pending = s
        return s

    def save_as(self, dest: str | os.PathLike, folder: Path) -> Optional[Session]:
        """Copy the open session to ``dest`` (replaced; the caller asks first) and go on in the copy;
        returns the copy (the same session when ``dest`` is its own file), or None (logged)."""
        s, dest = self.session, Path(dest).expanduser()
        if s is None:
            self.log("error", "No session is open: open a folder first.")
            return None
        if dest.exists() and dest.resolve() == s.path.resolve():
            return s
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
            copy = open_session(dest, folder=folder, mode="auto", create=False)
        except (OSError, sqlite3.Error, SessionError) as exc:
            self.log("error", f"Could not save the session to {dest}: {exc}")
            return None
        run_id = self.run_id
        self.close()
        self.session, self.run_id = copy, run_id
        self.log("info", f"Session saved as {dest}; decisions now go there.")
        return copy

    def unsaved(self, result: Optional[ScanResult]) -> str:
        """What opening another folder or closing would lose, in words ("" when nothing)."""
        if result is None:
            return ""
        what = f"the results of {result.detector} on {len(result.rows)} images"
        if self.session is None:
            return f"{what} (no session is open to keep them)"
        if self.session.read_only:
            return f"{what} (the session is read-only: {self.session.read_only_reason})"
        if self.run_id is None:
            return f"{what} (not stored in the session)"
        return ""

    def remember(self, key: str, value) -> None:
        """Front-end state (sort, filter, selection, detector) kept in the session for reopening."""
        s = self.writable
        if s is not None:
            s.set_ui_state(key, value)

    def set_good_folder(self, folder: Optional[Path]) -> None:
        s = self.writable
        if s is not None and s.good_folder() != folder:
            s.set_good_folder(folder)

    def store_threshold(self, value: float, reason: str) -> None:
        s = self.writable
        if s is not None and self.run_id is not None:
            s.set_threshold(self.run_id, value, reason)


@dataclass
class RestoredRun:
    """What reopening shows of a stored run (read off the UI thread by :meth:`SessionState.read_run`)."""

    session: Session
    run: RunInfo
    result: ScanResult  # the current threshold and group moves applied
    hand: Optional[Threshold]  # a threshold changed after the run, kept in the session (None: the run's own)
    reason: str
    band: Optional[ReviewBand]
    ui: dict  # front-end state kept in the session, with the run's detector and settings
    model: Optional[Detector] = None  # the model the run was scored with, loaded from the session
    model_record: Optional[ModelRecord] = None
    model_problem: str = ""  # why the kept model could not be loaded ("" when it was, or none is kept)


def read_run(session: Session, run: RunInfo, have_fingerprint: str = "") -> RestoredRun:
    """The stored ``run`` of ``session`` as the window restores it, with the model it was scored
    with when the session keeps it and it is not the one in memory (``have_fingerprint``): a
    worker-thread function."""
    result = session.load_run(run.id)
    hand, reason = None, "set by hand"
    if result.threshold is not None and run.threshold is not None and result.threshold.value != run.threshold.value:
        hand = result.threshold
        changes = [h for h in session.threshold_history(run.id) if h["value"] is not None]
        reason = changes[-1]["reason"] if changes and changes[-1]["reason"] else reason
    ui = {**session.ui_state(), "run_detector": run.detector, "run_settings": run.settings}
    got = RestoredRun(session, run, result, hand, reason, session.review_band(run.id), ui)
    got.model_record = session.model(run.fingerprint)
    if got.model_record is not None and run.fingerprint != have_fingerprint:
        try:
            got.model = load_kept_model(got.model_record)
        except (CheckpointError, OSError, ValueError) as exc:
            got.model_problem = f"the model kept with run {run.id} cannot be loaded: {exc}"
    return got


def read_maps(session: Session, run_id: int, paths: list[Path], progress, cancel) -> list:
    """The stored heat maps of ``paths`` in ``run_id``, in order (a worker-thread function)."""
    maps = []
    for i, path in enumerate(paths):
        cancel.raise_if_cancelled()
        maps.append(session.load_map(path, run_id))
        if i % 64 == 63:
            progress(i + 1, len(paths), "heat maps")
    return maps
