"""One writer per session: an OS file lock on ``<session>.lock`` held while it is open.

SQLite's WAL lets any number of readers work beside one writer, but two inspectors writing
verdicts into one session at once would each see the other's work appear under them. So the
process that opens a session for writing takes an exclusive, non-blocking lock on a file beside
it and keeps it until it closes; a second process is told who holds it (user, host, process id,
since when) and may open the session read-only. The OS drops the lock when the holder dies,
even by SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import IO, Optional


class SessionLockedError(Exception):
    """Another process has the session open for writing; the message names it."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _try_lock(fh: IO[bytes]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(fh: IO[bytes]) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        return
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


def read_holder(db_path: Path) -> dict:
    try:
        return json.loads(lock_path(db_path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"{holder.get('user', '?')} on {holder.get('host', '?')} (process {holder.get('pid', '?')}, "
            f"since {holder.get('since', '?')})")


def writer_active(db_path: Path) -> bool:
    """Whether a process holds the session's writer lock now (probed without taking it: a
    shared lock tried and dropped at once). A lock file that cannot be probed counts as held."""
    path = lock_path(db_path)
    if not path.exists():
        return False
    if sys.platform == "win32":  # pragma: no cover - a held lock cannot be probed read-only there
        return True
    import fcntl

    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return True


class WriterLock:
    """The exclusive writer lock of one session file."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fh: Optional[IO[bytes]] = None

    def acquire(self, user: str, since: str) -> None:
        fh = open(self.path, "a+b")  # never truncate: the holder's details stay readable
        if not _try_lock(fh):
            fh.close()
            holder = read_holder(self.db_path)
            raise SessionLockedError(
                f"session {self.db_path} is open for writing by {describe_holder(holder)}; "
                "open it read-only, or close it there first",
                holder,
            )
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"user": user, "host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
            _unlock(self._fh)
        finally:
            self._fh.close()
            self._fh = None
