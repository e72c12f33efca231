"""The session store: one SQLite file holding an inspection's runs and the inspector's decisions.

See the package docstring (:mod:`core.session`) for the API as a whole and
:mod:`core.session.schema` for the tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from core.data.images import Skipped, max_pixels
from core.grouping import GROUP_NAMES, Grouping
from core.io.export import display_path
from core.results import ScanResult, ScanRow, apply_grouping
from core.results.review import VERDICTS, ReviewBand, ReviewCounts, review_counts
from core.results.threshold import Threshold, calibrate
from core.runtime.paths import data_dir
from core.session.identity import app_version, file_sha256, now, os_user, relative_to
from core.session.lock import SessionLockedError, WriterLock, describe_holder, read_holder, writer_active
from core.session.maps import CODEC, CODECS, decode_map, encode_map
from core.session.schema import READABLE_FROM, SchemaError, current_version, migrate, read_version

SESSIONS_DIR = "sessions"


#: The counters of a run's review (one function for every count: :mod:`core.results.review`).
ReviewStatus = ReviewCounts


class SessionError(Exception):
    """A session that cannot be opened or used as asked; the message says why."""


class SessionReadOnlyError(SessionError):
    """A write to a session opened read-only."""


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: Path  # absolute
    size: int
    mtime: float
    sha256: str
    #: "new" (first seen), "changed" (content differs from the last sync), "same".
    state: str


@dataclass(frozen=True)
class StoredScore:
    """A score already in the session for some image content under one run key."""

    run_id: int  # the run that scored it (its map lives there)
    sha256: str
    score: float
    columns: dict
    height: int
    width: int


@dataclass(frozen=True)
class RunInfo:
    id: int
    detector: str
    fingerprint: str
    settings: dict
    run_key: str
    threshold: Optional[Threshold]  # as the run set it (with its calibration)
    app_version: str
    user: str
    started_at: str
    finished_at: str
    seconds: float
    n_new: int
    n_reused: int
    n_images: int
    skipped: list[Skipped]
    grouping_method: Optional[str]
    grouping_note: str

    def describe(self) -> str:
        return (f"run {self.id}: {self.detector} on {self.n_images} images ({self.n_new} new, {self.n_reused} reused) "
                f"by {self.user} at {self.finished_at}")


@dataclass(frozen=True)
class ModelRecord:
    """A model the session keeps: the one a run with the same ``fingerprint`` was scored with."""

    id: int
    fingerprint: str
    detector: str
    path: Path  # the model folder (config.json + weights.safetensors)
    weights_sha256: str
    good_folder: Optional[Path]  # the good images it was trained on (None: not known)
    settings: dict
    user: str
    at: str


@dataclass(frozen=True)
class Decision:
    """The current value of one of an image's decisions, with who made it and when."""

    value: Any
    user: str
    at: str


def default_session_path(folder: str | os.PathLike) -> Path:
    """Where the session of an inspected ``folder`` lives: the app's data folder, keyed by the
    folder's resolved path (never inside the folder itself, which may be read-only)."""
    resolved = Path(folder).expanduser().resolve()
    slug = re.sub(r"[^\w.\-]+", "_", resolved.name)[:40] or "root"
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    return data_dir() / SESSIONS_DIR / f"{slug}-{key}.db"


#: The longest image side a stored row may claim (libpng's own limit on PNG rows; an export writes
#: each heat map at its image's size).
MAX_IMAGE_SIDE = 1_000_000
#: Rows of a run are written in transactions of this many images (see :meth:`Session.record_run`).
RECORD_CHUNK = 256
#: A run whose rows are all written (``finished_at`` is set last); others are not shown or reused.
_DONE = "u.finished_at != ''"

#: The columns :meth:`Session._run_info` reads, named (a later schema may add columns to ``runs``).
_RUN_COLUMNS = ("u.id, u.detector, u.fingerprint, u.settings, u.run_key, u.threshold, u.app_version, u.user, "
                "u.started_at, u.finished_at, u.seconds, u.n_new, u.n_reused, u.skipped, u.grouping, u.grouping_note, "
                "(SELECT count(*) FROM results r WHERE r.run_id = u.id)")


# --------------------------------------------------------------------------- the session
class Session:
    """An open session file. Use :func:`open_session`; close it (or use ``with``) when done.

    Opened for writing it holds the session's writer lock; opened read-only (``mode="ro"``, or
    ``"auto"`` when another process writes) every write raises :class:`SessionReadOnlyError`.
    Every write is its own committed transaction.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: Optional[WriterLock], folder: Optional[Path],
                 read_only_reason: str = "") -> None:
        self.path = path
        self._conn = conn
        self._lock = lock
        self._mutex = threading.RLock()  # one transaction at a time across threads
        self.read_only = lock is None
        #: Why this session is read-only ("" when writable), e.g. who holds the writer lock.
        self.read_only_reason = read_only_reason
        self.user = os_user()
        meta = self.meta()
        stored = meta.get("folder")
        #: How anomaly maps are stored (:mod:`core.session.maps`), chosen when the session was created.
        self.map_codec = meta.get("map_codec", CODEC)
        if not isinstance(stored, (str, type(None))) or self.map_codec not in CODECS:
            raise SessionError(f"session {path} is damaged: its folder or map codec cannot be read")
        self.folder: Optional[Path] = folder if folder is not None else (Path(stored) if stored else None)
        if folder is not None and not stored and not self.read_only:
            self._set_meta("folder", str(folder))

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._conn is not None:
            try:
                if not self.read_only:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SessionError(f"session {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""
        if self.read_only:
            raise SessionReadOnlyError(f"session {self.path} is open read-only ({self.read_only_reason})")
        with self._mutex:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, key: str, value: str) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _rel(self, path: str | os.PathLike) -> str:
        return relative_to(Path(path), self.folder.resolve() if self.folder is not None else None)

    def _key(self, path: str | os.PathLike) -> str | bytes:
        """``images.path`` of ``path``: its relative path as text, or, for a file name that is not
        UTF-8 (possible on POSIX), its bytes (a BLOB), so that the stored name finds the file again."""
        return _db_text(self._rel(path))

    def _abs(self, rel: str | bytes) -> Path:
        p = Path(os.fsdecode(rel))
        if p.is_absolute() or self.folder is None:
            return p
        return self.folder / p

    def _image_id(self, path: str | os.PathLike) -> int:
        row = self.conn.execute("SELECT id FROM images WHERE path = ?", (self._key(path),)).fetchone()
        if row is None:
            raise SessionError(f"{path} is not an image of this session")
        return int(row[0])

    # ------------------------------------------------------------------ images
    def sync_images(self, paths: Sequence[str | os.PathLike]) -> list[ImageRecord]:
        """Record ``paths`` (size, mtime, content hash) and return them in the same order.

        A file whose size and modification time are unchanged since the last sync keeps its
        recorded hash (as git's index does); any other file is hashed again.
        """
        out: list[ImageRecord] = []
        with self._write() as c:
            for p in paths:
                path = Path(p)
                st = path.stat()
                rel = self._key(path)
                row = c.execute("SELECT id, size, mtime, sha256 FROM images WHERE path = ?", (rel,)).fetchone()
                if row is not None and row[1] == st.st_size and row[2] == st.st_mtime:
                    out.append(ImageRecord(int(row[0]), path, st.st_size, st.st_mtime, row[3], "same"))
                    continue
                sha = file_sha256(path)
                if row is None:
                    cur = c.execute("INSERT INTO images (path, size, mtime, sha256, first_seen) VALUES (?, ?, ?, ?, ?)",
                                    (rel, st.st_size, st.st_mtime, sha, now()))
                    out.append(ImageRecord(int(cur.lastrowid), path, st.st_size, st.st_mtime, sha, "new"))
                else:
                    c.execute("UPDATE images SET size = ?, mtime = ?, sha256 = ? WHERE id = ?",
                              (st.st_size, st.st_mtime, sha, row[0]))
                    out.append(ImageRecord(int(row[0]), path, st.st_size, st.st_mtime, sha,
                                           "same" if sha == row[3] else "changed"))
        return out

    def images(self) -> list[tuple[Path, str]]:
        """Every image the session knows: (absolute path, content hash)."""
        return [(self._abs(r[0]), r[1]) for r in self.conn.execute("SELECT path, sha256 FROM images ORDER BY path")]

    # ------------------------------------------------------------------ runs
    def reusable(self, run_key: str, hashes: Iterable[str]) -> dict[str, StoredScore]:
        """Scores already stored under ``run_key`` for these image contents: ``{sha256: StoredScore}``
        (the most recent run's where several have one)."""
        wanted = set(hashes)
        out: dict[str, StoredScore] = {}
        rows = self.conn.execute(
            "SELECT r.scored_in, r.image_sha256, r.score, r.columns, r.height, r.width FROM results r "
            f"JOIN runs u ON u.id = r.run_id WHERE u.run_key = ? AND {_DONE} ORDER BY r.run_id", (run_key,))
        for scored_in, sha, score, columns, h, w in rows:
            if sha in wanted:
                try:
                    out[sha] = StoredScore(int(scored_in), sha, float(score), dict(json.loads(columns)), int(h), int(w))
                except (ValueError, TypeError, OverflowError) as exc:
                    raise self._damaged(f"a stored score of run {scored_in}", exc) from None
        return out

    def record_run(
        self,
        result: ScanResult,
        images: Sequence[ImageRecord],
        *,
        fingerprint: str,
        settings: dict,
        run_key: str,
        started_at: str,
        scored_in: Sequence[Optional[int]] | None = None,
        store_maps: bool = True,
    ) -> int:
        """Store a finished scan as a new run and return its id.

        ``images[i]`` is the image record of ``result.rows[i]``; ``scored_in[i]`` is the earlier
        run a reused row comes from (``None``: scored now, its map is stored with this run).
        """
        if len(images) != len(result.rows):
            raise ValueError(f"{len(images)} image records for {len(result.rows)} rows")
        origin = list(scored_in) if scored_in is not None else [None] * len(images)
        n_reused = sum(1 for s in origin if s is not None)
        grouping = None
        if result.grouping is not None:
            grouping = json.dumps({"method": result.grouping.method, "cut_value": result.grouping.cut_value,
                                   "moved": [int(i) for i in result.grouping.moved]})
        with self._write() as c:  # finished_at = '' marks the run as being written: not shown, not reused
            cur = c.execute(
                "INSERT INTO runs (detector, fingerprint, settings, run_key, threshold, app_version, user, started_at, "
                "finished_at, seconds, n_new, n_reused, skipped, grouping, grouping_note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?)",
                (result.detector, fingerprint, json.dumps(settings, sort_keys=True, default=str), run_key,
                 json.dumps(result.threshold.to_dict()) if result.threshold is not None else None,
                 app_version(), self.user, started_at, float(result.seconds), len(images) - n_reused, n_reused,
                 json.dumps([[self._rel(s.path) if Path(s.path).is_absolute() else str(s.path), s.reason]
                             for s in result.skipped]),
                 grouping, result.grouping_note))
            run_id = int(cur.lastrowid)
        # In chunks: maps are encoded outside any transaction, and each chunk's transaction is
        # short, so decisions made meanwhile (another thread of the same front end) commit at once.
        try:
            self._record_rows(run_id, result, images, origin, store_maps)
        except BaseException:
            with self._write() as c:  # leave no half-written run behind (reopening would remove it too)
                c.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            raise
        with self._write() as c:
            c.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (now(), run_id))
        return run_id

    def _record_rows(self, run_id: int, result: ScanResult, images: Sequence[ImageRecord],
                     origin: list[Optional[int]], store_maps: bool) -> None:
        items = list(enumerate(zip(result.rows, images, origin)))
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:  # zlib, PNG: no GIL
            self._record_chunks(run_id, items, store_maps, pool)

    def _record_chunks(self, run_id: int, items: list, store_maps: bool, pool: ThreadPoolExecutor) -> None:
        for start in range(0, len(items), RECORD_CHUNK):
            chunk = items[start:start + RECORD_CHUNK]
            todo = [(pos, row.anomaly_map) for pos, (row, _, src) in chunk
                    if src is None and store_maps and row.anomaly_map is not None]
            blobs = dict(zip((pos for pos, _ in todo), pool.map(lambda m: encode_map(m, self.map_codec),
                                                                (m for _, m in todo))))
            with self._write() as c:
                for pos, (row, img, src) in chunk:
                    c.execute(
                        "INSERT INTO results (run_id, image_id, position, score, flagged, group_name, columns, height, "
                        "width, image_sha256, scored_in) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, img.id, pos, float(row.score), None if row.flagged is None else int(bool(row.flagged)),
                         row.columns.get("group"), json.dumps(row.columns, default=_json_default),
                         int(row.image_shape[0]), int(row.image_shape[1]), img.sha256,
                         run_id if src is None else int(src)))
                    if pos in blobs:
                        codec, h, w, blob = blobs[pos]
                        c.execute("INSERT OR REPLACE INTO maps (run_id, image_sha256, codec, height, width, data) "
                                  "VALUES (?, ?, ?, ?, ?, ?)", (run_id, img.sha256, codec, h, w, blob))

    def runs(self) -> list[RunInfo]:
        rows = self.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs u WHERE {_DONE} ORDER BY u.id").fetchall()
        return [self._run_info(r) for r in rows]

    def run(self, run_id: Optional[int] = None) -> RunInfo:
        """Run ``run_id``, or the latest run; raises :class:`SessionError` when there is none."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs u "
        row = (self.conn.execute(sql + f"WHERE u.id = ? AND {_DONE}", (run_id,)).fetchone() if run_id is not None
               else self.conn.execute(sql + f"WHERE {_DONE} ORDER BY u.id DESC LIMIT 1").fetchone())
        if row is None:
            raise SessionError(f"session {self.path} has no run {run_id}" if run_id is not None
                               else f"session {self.path} holds no runs yet")
        return self._run_info(row)

    def _damaged(self, what: str, exc: BaseException) -> SessionError:
        """The error for a session whose content cannot be read (edited by hand, damaged)."""
        return SessionError(f"session {self.path} is damaged: {what} cannot be read "
                            f"({type(exc).__name__ if not str(exc) else ' '.join(str(exc).split())})")

    def _run_info(self, r: tuple) -> RunInfo:
        try:
            return self._run_info_of(r)
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
            raise self._damaged(f"run {r[0]}", exc) from None

    def _run_info_of(self, r: tuple) -> RunInfo:
        (rid, detector, fingerprint, settings, key, threshold, version, user, started, finished, seconds, n_new,
         n_reused, skipped, grouping, note, n) = tuple(r)
        for name, v in (("detector", detector), ("fingerprint", fingerprint), ("run key", key), ("app version", version),
                        ("user", user), ("start", started), ("finish", finished), ("grouping note", note)):
            if not isinstance(v, str):
                raise TypeError(f"its {name} is not text")
        return RunInfo(
            int(rid), detector, fingerprint, json.loads(settings), key,
            Threshold.from_dict(json.loads(threshold)) if threshold else None, version, user, started, finished,
            float(seconds), int(n_new), int(n_reused), int(n),
            [Skipped(self._abs(p), reason) for p, reason in json.loads(skipped)],
            json.loads(grouping)["method"] if grouping else None, note)

    def load_run(self, run_id: Optional[int] = None, *, maps: bool = False, decisions: bool = True) -> ScanResult:
        """A stored run as a :class:`~core.results.ScanResult` (rows in scan order).

        With ``decisions`` (the default) the inspector's current threshold and group moves are
        applied on top: that is the state to show on reopening. Without, the rows are exactly
        as the run wrote them. ``maps`` decodes every anomaly map (else use :meth:`load_map`
        per image, which a gallery needs only for the image on screen).
        """
        info = self.run(run_id)
        rows: list[ScanRow] = []
        for rel, score, flagged, columns, h, w, sha, src in self.conn.execute(
                "SELECT i.path, r.score, r.flagged, r.columns, r.height, r.width, r.image_sha256, r.scored_in "
                "FROM results r JOIN images i ON i.id = r.image_id WHERE r.run_id = ? ORDER BY r.position", (info.id,)):
            m = self.stored_map(int(src), sha) if maps else None
            try:
                cols = json.loads(columns)
                if not (0 < int(h) <= MAX_IMAGE_SIDE and 0 < int(w) <= MAX_IMAGE_SIDE and int(h) * int(w) <= max_pixels()):
                    raise ValueError(f"an image size of {h} x {w}")  # its heat map is written at that size
                rows.append(ScanRow(self._abs(rel), float(score), None if flagged is None else bool(flagged),
                                    (int(h), int(w)), m, cols if isinstance(cols, dict) else dict(cols)))
            except (ValueError, TypeError, OverflowError) as exc:
                raise self._damaged(f"the row of {display_path(self._abs(rel))} in run {info.id}", exc) from None
        result = ScanResult(info.detector, rows, list(info.skipped), info.threshold, info.seconds)
        result.grouping_note = info.grouping_note
        if info.grouping_method is not None:
            try:
                g = json.loads(self.conn.execute("SELECT grouping FROM runs WHERE id = ?", (info.id,)).fetchone()[0])
                labels = np.array([GROUP_NAMES.index(r.columns.get("group", GROUP_NAMES[0])) for r in rows],
                                  dtype=np.int64)
                result.grouping = Grouping(labels, g["method"], g.get("cut_value"), list(g.get("moved", [])))
            except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
                raise self._damaged(f"the grouping of run {info.id}", exc) from None
        if decisions:
            self.apply_decisions(result, info.id)
        return result

    def apply_decisions(self, result: ScanResult, run_id: int) -> None:
        """Apply the session's current threshold for ``run_id`` and its group moves to ``result``
        (the moves sit on top of whatever grouping ``result`` has, so they survive a regroup)."""
        value = self.threshold_value(run_id)
        if value is not None and result.grouping is None:
            base = self.run(run_id).threshold
            if base is None or base.value != value:
                result.apply_threshold(Threshold.explicit(value))
        moves = self.group_moves()
        if result.grouping is not None and moves:
            g = result.grouping
            labels = g.labels.copy()
            moved = list(g.moved)
            for i, row in enumerate(result.rows):
                d = moves.get(row.path)
                if d is None:
                    continue
                label = GROUP_NAMES.index(d.value)
                if int(labels[i]) != label:
                    labels[i] = label
                    if i not in moved:
                        moved.append(i)
            g.labels, g.moved = labels, sorted(moved)
            apply_grouping(result, g)

    def load_map(self, path: str | os.PathLike, run_id: Optional[int] = None) -> Optional[np.ndarray]:
        """The stored anomaly map (float16) of ``path`` in ``run_id`` (default: the latest run)."""
        info = self.run(run_id)
        row = self.conn.execute("SELECT scored_in, image_sha256 FROM results WHERE run_id = ? AND image_id = ?",
                                (info.id, self._image_id(path))).fetchone()
        return None if row is None else self.stored_map(int(row[0]), row[1])

    def stored_map(self, run_id: int, sha: str) -> Optional[np.ndarray]:
        row = self.conn.execute("SELECT codec, height, width, data FROM maps WHERE run_id = ? AND image_sha256 = ?",
                                (run_id, sha)).fetchone()
        if row is None:
            return None
        try:  # bounded: a tampered blob (a zlib bomb, a PNG claiming a huge size) is refused, not decoded
            if not isinstance(row[0], str) or not isinstance(row[3], bytes):
                raise TypeError("its codec or data has the wrong type")
            return decode_map(row[0], int(row[1]), int(row[2]), row[3])
        except (ValueError, TypeError, OverflowError, zlib.error) as exc:
            raise SessionError(f"session {self.path} is damaged: a stored heat map cannot be read ({exc})") from None

    def result_sources(self, run_id: Optional[int] = None) -> dict[Path, tuple[str, int]]:
        """``{image path: (content hash when scanned, run holding its map)}`` for the rows of
        ``run_id`` (default latest): what :meth:`stored_map` needs, and what the file must still hash to."""
        info = self.run(run_id)
        try:
            return {self._abs(p): (str(sha), int(src)) for p, sha, src in self.conn.execute(
                "SELECT i.path, r.image_sha256, r.scored_in FROM results r JOIN images i ON i.id = r.image_id "
                "WHERE r.run_id = ?", (info.id,))}
        except (ValueError, TypeError, OverflowError) as exc:
            raise self._damaged(f"the rows of run {info.id}", exc) from None

    # ------------------------------------------------------------------ decisions
    def _latest(self, table: str, column: str) -> dict[Path, Decision]:
        sql = (f"SELECT i.path, t.{column}, t.user, t.at FROM {table} t JOIN images i ON i.id = t.image_id "
               f"WHERE t.id IN (SELECT max(id) FROM {table} GROUP BY image_id)")
        return {self._abs(p): Decision(v, u, at) for p, v, u, at in self.conn.execute(sql) if v is not None}

    def set_verdict(self, path: str | os.PathLike, verdict: Optional[str]) -> None:
        """Record the inspector's verdict on ``path`` ('ok', 'ng', 'unsure'; ``None`` clears it)."""
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"a verdict is one of {', '.join(VERDICTS)} (or None), not {verdict!r}")
        image_id = self._image_id(path)
        with self._write() as c:
            c.execute("INSERT INTO verdicts (image_id, verdict, user, at) VALUES (?, ?, ?, ?)",
                      (image_id, verdict, self.user, now()))

    def verdicts(self) -> dict[Path, Decision]:
        """Current verdict per image (images without one, or cleared, are absent)."""
        return self._latest("verdicts", "verdict")

    def set_note(self, path: str | os.PathLike, text: str) -> None:
        image_id = self._image_id(path)
        with self._write() as c:
            c.execute("INSERT INTO notes (image_id, text, user, at) VALUES (?, ?, ?, ?)",
                      (image_id, text, self.user, now()))

    def notes(self) -> dict[Path, Decision]:
        return {p: d for p, d in self._latest("notes", "text").items() if d.value}

    def move_to_group(self, path: str | os.PathLike, group: Optional[str]) -> None:
        """A hand move of ``path`` to 'normal' or 'suspect' (``None``: back to the algorithm's group).
        It stays on top of every later grouping of the session's runs."""
        if group is not None and group not in GROUP_NAMES:
            raise ValueError(f"group must be one of {', '.join(GROUP_NAMES)} (or None), not {group!r}")
        image_id = self._image_id(path)
        with self._write() as c:
            c.execute("INSERT INTO group_moves (image_id, group_name, user, at) VALUES (?, ?, ?, ?)",
                      (image_id, group, self.user, now()))

    def group_moves(self) -> dict[Path, Decision]:
        return self._latest("group_moves", "group_name")

    def set_threshold(self, run_id: int, value: float, reason: str = "set by hand") -> None:
        """A new decision threshold for ``run_id`` (the review band, if any, is kept)."""
        low, high = self._band_values(run_id)
        self._threshold_change(run_id, float(value), low, high, reason)

    def set_review_band(self, run_id: int, low: Optional[float], high: Optional[float]) -> None:
        """Two thresholds for ``run_id``: at or below ``low`` passes, above ``high`` fails, between is
        to review; ``None, None`` removes the band."""
        if (low is None) != (high is None):
            raise ValueError("a review band needs both thresholds (or neither)")
        if low is not None and not float(low) <= float(high):
            raise ValueError(f"the review band's low threshold {low} is above its high one {high}")
        self._threshold_change(run_id, self.threshold_value(run_id), low, high, "review band")

    def _threshold_change(self, run_id: int, value: Optional[float], low: Optional[float], high: Optional[float],
                          reason: str) -> None:
        self.run(run_id)
        with self._write() as c:
            c.execute("INSERT INTO threshold_changes (run_id, value, band_low, band_high, reason, user, at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", (run_id, value, low, high, reason, self.user, now()))

    def _last_threshold_change(self, run_id: int):
        return self.conn.execute("SELECT value, band_low, band_high, user, at FROM threshold_changes "
                                 "WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()

    def threshold_value(self, run_id: int) -> Optional[float]:
        """The current threshold of ``run_id``: the last one set by hand, else the run's own."""
        row = self._last_threshold_change(run_id)
        if row is not None and row[0] is not None:
            return float(row[0])
        thr = self.run(run_id).threshold
        return None if thr is None else thr.value

    def _band_values(self, run_id: int) -> tuple[Optional[float], Optional[float]]:
        row = self._last_threshold_change(run_id)
        return (None, None) if row is None else (row[1], row[2])

    def review_band(self, run_id: int) -> Optional[ReviewBand]:
        low, high = self._band_values(run_id)
        return None if low is None else ReviewBand(float(low), float(high))

    def threshold_history(self, run_id: int) -> list[dict]:
        return [dict(zip(("value", "band_low", "band_high", "reason", "user", "at"), r)) for r in self.conn.execute(
            "SELECT value, band_low, band_high, reason, user, at FROM threshold_changes WHERE run_id = ? ORDER BY id",
            (run_id,))]

    def mark_normal(self, path: str | os.PathLike, normal: bool = True) -> None:
        """"This one is normal": add ``path`` to the session's good set (``normal=False`` takes it out)."""
        image_id = self._image_id(path)
        with self._write() as c:
            c.execute("INSERT INTO good_set (image_id, added, user, at) VALUES (?, ?, ?, ?)",
                      (image_id, int(bool(normal)), self.user, now()))

    def good_set(self) -> list[Path]:
        return sorted(p for p, d in self._latest("good_set", "added").items() if d.value)

    def recalibrate_with_good_set(self, run_id: int, fpr: Optional[float] = None) -> Threshold:
        """Re-calibrate ``run_id``'s threshold with the session's good set added to the held-out
        normal scores it was calibrated on, and record it as a threshold change.

        The good-set images' scores come from the run itself (no re-scoring). ``fpr`` defaults
        to the rate of the run's calibration. Needs a run with a calibrated threshold.
        """
        info = self.run(run_id)
        base = info.threshold
        if base is None or base.method != "calibrated" or not base.calibration_scores:
            raise SessionError(f"run {info.id} has no calibrated threshold to re-calibrate (set one by hand)")
        good = set(self.good_set())
        extra = [r.score for r in self.load_run(info.id, decisions=False).rows if r.path in good]
        rate = fpr if fpr is not None else (base.fpr if base.fpr is not None else 0.01)
        thr = calibrate([*base.calibration_scores, *extra], rate)
        thr.settings = base.settings
        self.set_threshold(info.id, thr.value, f"re-calibrated at FPR {rate:g} on {len(base.calibration_scores)} "
                                               f"held-out + {len(extra)} images marked normal")
        return thr

    # ------------------------------------------------------------------ models and the good folder
    def models_dir(self) -> Path:
        """Where the models this session keeps are saved: a folder beside the session file."""
        return self.path.with_name(self.path.stem + ".models")

    def record_model(self, fingerprint: str, detector: str, path: str | os.PathLike, weights_sha256: str,
                     good_folder: Optional[str | os.PathLike], settings: dict) -> ModelRecord:
        """Record the model saved in ``path`` (its weights' checksum ``weights_sha256``); a model of
        the same fingerprint recorded before is replaced."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO models (fingerprint, detector, path, weights_sha256, good_folder, "
                      "settings, user, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (fingerprint, detector, str(Path(path)), weights_sha256,
                       str(good_folder) if good_folder is not None else None,
                       json.dumps(settings, sort_keys=True, default=str), self.user, now()))
        return self.model(fingerprint)

    def _model_record(self, row) -> ModelRecord:
        mid, fp, det, path, sha, good, settings, user, at = row
        return ModelRecord(int(mid), fp, det, Path(path), sha, Path(good) if good else None, json.loads(settings),
                           user, at)

    def model(self, fingerprint: str) -> Optional[ModelRecord]:
        """The kept model of this fingerprint (a run's ``fingerprint`` names the model it was scored with)."""
        try:
            row = self.conn.execute("SELECT id, fingerprint, detector, path, weights_sha256, good_folder, settings, "
                                    "user, at FROM models WHERE fingerprint = ?", (fingerprint,)).fetchone()
        except sqlite3.OperationalError:  # a version-1 session read without upgrading it: it keeps no models
            return None
        return None if row is None else self._model_record(row)

    def models(self) -> list[ModelRecord]:
        """Every kept model, oldest first."""
        try:
            rows = self.conn.execute("SELECT id, fingerprint, detector, path, weights_sha256, good_folder, settings, "
                                     "user, at FROM models ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # a version-1 session read without upgrading it: it keeps no models
            return []
        return [self._model_record(r) for r in rows]

    def set_good_folder(self, folder: Optional[str | os.PathLike]) -> None:
        """The folder of good images of this inspection (what the window's good-images field shows)."""
        self._set_meta("good_folder", str(folder) if folder is not None else "")

    def good_folder(self) -> Optional[Path]:
        value = self.meta().get("good_folder")
        return Path(value) if value else None

    def summary(self) -> str:
        """What the session holds, in one line (the window's offer to reopen it says it)."""
        runs = self.runs()
        if not runs:
            return "no runs yet"
        r = runs[-1]

        def n(k: int, what: str) -> str:
            return f"{k} {what}{'' if k == 1 else 's'}"

        band = self.review_band(r.id)
        value = self.threshold_value(r.id)
        parts = [f"run {r.id} of {len(runs)}: {r.detector} on {n(r.n_images, 'image')} ({r.finished_at[:16]})",
                 n(len(self.verdicts()), "verdict"), n(len(self.notes()), "note")]
        if value is not None and (r.threshold is None or value != r.threshold.value):
            parts.append(f"threshold {value:.6g} changed after the run")
        if band is not None:
            parts.append(f"review band {band.low:.6g}–{band.high:.6g}")
        if self.good_set():
            parts.append(n(len(self.good_set()), "image") + " marked normal")
        parts.append("its model kept" if self.model(r.fingerprint) is not None else "no model kept")
        return "; ".join(parts)

    def set_ui_state(self, key: str, value: Any) -> None:
        """Front-end state to restore on reopening (JSON-serialisable: sort, filter, selection, ...)."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO ui_state (key, value, user, at) VALUES (?, ?, ?, ?)",
                      (key, json.dumps(value), self.user, now()))

    def ui_state(self) -> dict[str, Any]:
        """The front-end state saved (an entry that is not valid JSON is left out: state to
        restore, not data)."""
        out: dict[str, Any] = {}
        for k, v in self.conn.execute("SELECT key, value FROM ui_state"):
            try:
                out[k] = json.loads(v)
            except (ValueError, TypeError):
                continue
        return out

    # ------------------------------------------------------------------ review
    def review_counts(self, run_id: Optional[int] = None, result: Optional[ScanResult] = None) -> ReviewCounts:
        """Every count of the review of ``run_id`` (default latest) under the session's current
        threshold, band and verdicts (:func:`core.results.review.review_counts`, the one function
        the window, the report and the export share). ``result``: the run as loaded already."""
        info = self.run(run_id)
        result = result if result is not None else self.load_run(info.id)
        threshold = None if result.grouping is not None else self.threshold_value(info.id)
        return review_counts(result.rows, threshold, self.review_band(info.id),
                             {p: d.value for p, d in self.verdicts().items()})

    def review_status(self, run_id: Optional[int] = None, result: Optional[ScanResult] = None) -> ReviewCounts:
        """Counters of the review of ``run_id`` (default latest): reviewed, left to review
        (unreviewed images in the band or flagged), verdicts that disagree with the flag."""
        return self.review_counts(run_id, result)

    def review_queue(self, run_id: Optional[int] = None, result: Optional[ScanResult] = None) -> list[Path]:
        """Unreviewed images in the review band or flagged, highest score first: the "to review" walk."""
        return list(self.review_counts(run_id, result).queue)


def _db_text(text: str) -> str | bytes:
    """``text`` as SQLite can hold it: itself, or the bytes of a file name that is not UTF-8
    (its undecodable bytes are surrogates in Python, which SQLite's UTF-8 text cannot hold)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot store {type(v).__name__} in a results column")


# --------------------------------------------------------------------------- opening
def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    if read_only:
        # A session no one writes (no writer lock held, no write-ahead log beside it) is opened
        # immutable: SQLite then creates no -wal / -shm files beside it, and it opens in a folder
        # this user cannot write. Otherwise read-only through the log the writer keeps.
        wal = path.with_name(path.name + "-wal")
        quiet = not wal.exists() and not writer_active(path)
        uri = f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if quiet else "")
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def open_session(path: str | os.PathLike, *, folder: str | os.PathLike | None = None, mode: str = "rw",
                 create: bool = True, map_codec: str = CODEC) -> Session:
    """Open (or create) the session file at ``path``.

    ``mode``: ``"rw"`` takes the writer lock and raises :class:`SessionLockedError` (naming the
    holder) when another process has it; ``"ro"`` opens read-only; ``"auto"`` falls back to
    read-only when locked (``session.read_only_reason`` says why). ``folder`` is the inspected
    folder (image paths are stored relative to it, so a session moved to another machine opens
    against the folder given there); a new session records it, and ``map_codec`` (lossless
    float16 by default, see :mod:`core.session.maps`).
    """
    if mode not in ("rw", "ro", "auto"):
        raise ValueError(f"mode is 'rw', 'ro' or 'auto', not {mode!r}")
    if map_codec not in CODECS:
        raise ValueError(f"map_codec is one of {', '.join(CODECS)}, not {map_codec!r}")
    db = Path(path).expanduser()
    # resolved: a relative folder would mean another folder from another working directory
    root = Path(folder).expanduser().resolve() if folder is not None else None
    if db.exists() and db.is_dir():
        raise SessionError(f"session must be a file, not a folder: {db}")
    if not db.exists():
        if mode == "ro" or not create:
            raise SessionError(f"session not found: {db}")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise SessionError(f"cannot create session {db}: {db.parent} is a file, not a folder") from None
        except OSError as exc:
            raise SessionError(f"cannot create session {db}: {exc.strerror or exc}") from None
    elif mode == "ro" and db.stat().st_size == 0:
        raise SessionError(f"session {db} is empty (0 bytes): no session was ever written to it")
    lock: Optional[WriterLock] = None
    reason = ""
    if mode in ("rw", "auto"):
        lock = WriterLock(db)
        try:
            lock.acquire(os_user(), now())
        except SessionLockedError:
            if mode == "rw" or not db.exists():
                raise
            lock = None
            reason = f"open for writing by {describe_holder(read_holder(db))}"
        except OSError as exc:  # a read-only folder or share: read, do not write
            if mode == "rw":
                raise SessionError(f"cannot open session {db} for writing ({exc}); open it read-only") from None
            lock, reason = None, f"cannot write beside it ({exc.strerror or exc})"
    else:
        reason = "opened read-only"
    conn: Optional[sqlite3.Connection] = None
    try:
        conn = _connect(db, read_only=lock is None)
        if lock is not None:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # a decision survives power loss, not only a crash
            fresh = read_version(conn) == 0
            migrate(conn, str(db))
            # a run a killed process was writing: its rows go (cascade), its images stay
            conn.execute("DELETE FROM runs WHERE finished_at = ''")
            if fresh:
                conn.execute("INSERT INTO meta (key, value) VALUES ('created', ?), ('created_by', ?), ('app_version', ?), "
                             "('map_codec', ?)", (now(), os_user(), app_version(), map_codec))
        else:
            version = read_version(conn)
            if version != current_version() and not READABLE_FROM <= version < current_version():
                conn.close()
                if version == 0:
                    raise SessionError(f"{db} is not an Anomaly Inspector session (an empty or foreign SQLite file)")
                if version > current_version():
                    raise SchemaError(f"session {db} has schema version {version}, newer than this program reads "
                                      f"({current_version()}); update Anomaly Inspector")
                raise SessionError(f"session {db} is at schema version {version} and must be upgraded: open it for "
                                   "writing once")
        return Session(db, conn, lock, root, reason)  # reads the meta table: a damaged file fails here too
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if lock is not None:
            lock.release()
        raise SessionError(f"cannot open session {db}: {exc}") from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
