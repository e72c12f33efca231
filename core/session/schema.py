"""The session database's schema and its migrations.

The schema version lives in SQLite's ``PRAGMA user_version``. :data:`MIGRATIONS` holds one
step per version: ``MIGRATIONS[0]`` builds version 1 from an empty file, ``MIGRATIONS[k]``
turns version ``k`` into ``k + 1``. Opening a session runs the missing steps in one
transaction each, so a file written by any earlier release is brought up to date, and a file
from a newer release is refused (:class:`SchemaError`) rather than misread.

Tables (version 1):

``meta``            key/value facts about the session (folder, created, created_by, ...).
``images``          one row per image file: path (relative to the session folder when inside
                    it), size, mtime, SHA-256 of the content, first_seen.
``runs``            one row per scan: detector, model fingerprint (weights checksum), settings,
                    run key (what makes scores reusable), threshold with its calibration, app
                    version, user, start/finish time, counts of new and reused images, skipped
                    files, grouping method. ``finished_at`` is set last: '' marks a run still
                    being written (or left by a killed process), never shown nor reused.
``results``         per run and image: score, flagged, group, detector columns, image size,
                    the image's hash when scored, and the run it was first scored in.
``maps``            the anomaly map of an image content (hash) in the run that scored it, as a
                    compressed blob (see :mod:`.maps`); a reused result points at it through
                    ``results.scored_in``, so reuse copies no maps.
``verdicts``        the inspector's verdicts (ok / ng / unsure / NULL = cleared), append-only.
``notes``           notes per image, append-only (the latest is the current one).
``group_moves``     hand moves between groups (normal / suspect / NULL = back to automatic).
``threshold_changes`` threshold and review band (low, high) per run, append-only.
``good_set``        "this one is normal": images added to (or removed from) the good set.
``ui_state``        key/value state a front end restores on reopen (sort, filter, selection).

Version 2 adds

``models``          the models the session keeps (a front end saves the model it scored with in a
                    folder beside the session): detector, fingerprint (the runs' ``fingerprint``
                    names the model that scored them), folder, SHA-256 of the weights file, the
                    good-image folder it was trained on, settings, who and when.

and the meta key ``good_folder`` (the folder of good images of the inspected folder).

Every decision table records ``user`` (the OS user name) and ``at`` (UTC, ISO 8601).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


class SchemaError(Exception):
    """A session file this program cannot read (newer or foreign); the message says why."""


_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    sha256 TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    detector TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    run_key TEXT NOT NULL,
    threshold TEXT,
    app_version TEXT NOT NULL,
    user TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    seconds REAL NOT NULL,
    n_new INTEGER NOT NULL,
    n_reused INTEGER NOT NULL,
    skipped TEXT NOT NULL,
    grouping TEXT,
    grouping_note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_key ON runs (run_key);
CREATE TABLE results (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    image_id INTEGER NOT NULL REFERENCES images (id),
    position INTEGER NOT NULL,
    score REAL NOT NULL,
    flagged INTEGER,
    group_name TEXT,
    columns TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    image_sha256 TEXT NOT NULL,
    scored_in INTEGER NOT NULL,
    PRIMARY KEY (run_id, image_id)
);
CREATE INDEX results_hash ON results (image_sha256);
CREATE TABLE maps (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    image_sha256 TEXT NOT NULL,
    codec TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, image_sha256)
);
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images (id),
    verdict TEXT CHECK (verdict IN ('ok', 'ng', 'unsure') OR verdict IS NULL),
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX verdicts_image ON verdicts (image_id, id);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images (id),
    text TEXT NOT NULL,
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX notes_image ON notes (image_id, id);
CREATE TABLE group_moves (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images (id),
    group_name TEXT CHECK (group_name IN ('normal', 'suspect') OR group_name IS NULL),
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX group_moves_image ON group_moves (image_id, id);
CREATE TABLE threshold_changes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    value REAL,
    band_low REAL,
    band_high REAL,
    reason TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX threshold_changes_run ON threshold_changes (run_id, id);
CREATE TABLE good_set (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images (id),
    added INTEGER NOT NULL,
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE ui_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, user TEXT NOT NULL, at TEXT NOT NULL);
"""


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL statement by statement (``executescript`` would commit the
    migration's transaction half-way)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


_V2 = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    detector TEXT NOT NULL,
    path TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    good_folder TEXT,
    settings TEXT NOT NULL,
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
"""


def _to_v1(conn: sqlite3.Connection) -> None:
    run_script(conn, _V1)


def _to_v2(conn: sqlite3.Connection) -> None:
    run_script(conn, _V2)


#: The oldest version a read-only open reads as it is (version 2 only added a table: a version-1
#: session read by ``report`` / ``export`` simply keeps no models).
READABLE_FROM = 1

#: ``MIGRATIONS[k]`` upgrades a database at version ``k`` to ``k + 1``.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v1, _to_v2]


def current_version() -> int:
    return len(MIGRATIONS)


def read_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring ``conn`` to :func:`current_version`; returns the version it was at.

    Each step runs in its own transaction together with the new ``user_version``, so an
    interrupted upgrade leaves the file at the last complete version.
    """
    start = read_version(conn)
    target = current_version()
    if start > target:
        raise SchemaError(
            f"session {where} has schema version {start}, newer than this program reads ({target}); "
            "update Anomaly Inspector"
        )
    if start == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise SchemaError(f"{where} is an SQLite file but not an Anomaly Inspector session")
    for version in range(start, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start
