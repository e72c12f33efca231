"""Session commands of ``anomaly-inspector``: ``scan --session FILE``, ``report`` and ``export``.

- ``scan FOLDER ... --session FILE`` also writes its run into the session FILE (created if
  missing), scoring only images that are new or changed since an earlier run of the same model
  and settings ("12 new, 83 reused"); its outputs still cover every image.
- ``report SESSION --out report.html``: one self-contained HTML report of the latest run.
- ``export SESSION --out DIR``: results.csv with provenance and a ``verdict`` column,
  flagged.txt, skipped.csv, heatmaps/, provenance.json.

SESSION is a session file, or an inspected folder (its session in the app's data folder).
Both read the session read-only, so they work while the GUI has it open for review.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from app.cli.common import EXIT_OK, UsageError, info, int_at_least


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a session's run")
    r.add_argument("session", metavar="SESSION", help="session file, or an inspected folder (its default session)")
    r.add_argument("--out", required=True, metavar="HTML", help="the report file to write")
    r.add_argument("--run", type=int_at_least(1), metavar="N", help="which run (default: the latest)")
    r.add_argument("--max-images", type=int_at_least(0), default=80, metavar="N",
                   help="show at most N flagged / disagreeing images (default 80)")
    r.add_argument("--redact", action="store_true",
                   help="for a report that leaves the building: image paths relative to the inspected folder, the "
                        "folder and the session file by name only, user names replaced by 'inspector 1', ...")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(handler=cmd_report)

    e = sub.add_parser("export", help="export a session's run: results.csv with verdicts and provenance, "
                                      "flagged.txt, heatmaps/")
    e.add_argument("session", metavar="SESSION", help="session file, or an inspected folder (its default session)")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    e.add_argument("--run", type=int_at_least(1), metavar="N", help="which run (default: the latest)")
    e.add_argument("--no-heatmaps", action="store_true", help="do not write heat map images")
    e.add_argument("--overwrite", action="store_true",
                   help="replace the content of a non-empty --out that holds no earlier results")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(handler=cmd_export)


def add_session_option(scan_parser: argparse.ArgumentParser) -> None:
    scan_parser.add_argument("--session", metavar="FILE",
                             help="also record the run in this session file (created if missing); images scored "
                                  "before by the same model and settings are reused")


def _session_file(text: str) -> Path:
    from core.session import default_session_path

    p = Path(text).expanduser()
    if p.is_dir():
        default = default_session_path(p)
        if not default.exists():
            raise UsageError(f"{p} is a folder without a session (looked for {default})")
        return default
    if not p.exists():
        raise UsageError(f"session not found: {p}")
    return p


def _open(path: Path, folder: Optional[Path] = None, mode: str = "ro"):
    from core.session import SchemaError, SessionError, SessionLockedError, open_session

    try:
        return open_session(path, folder=folder, mode=mode)
    except (SessionLockedError, SessionError, SchemaError) as exc:
        raise UsageError(str(exc)) from None


def check_scan_session(args: argparse.Namespace, folder: Path) -> None:
    """Fail early (before any training) when ``--session`` cannot take this scan."""
    if not getattr(args, "session", None):
        return
    s = _open(Path(args.session).expanduser(), folder, mode="rw")
    try:
        recorded = s.meta().get("folder")
        if recorded and not Path(recorded).is_absolute():  # written before folders were stored resolved
            raise UsageError(f"session {s.path} records its folder only as '{recorded}' (a relative path), so "
                             "which folder it belongs to is unknown; give another --session")
        if recorded and Path(recorded).resolve() != folder.resolve():
            raise UsageError(f"session {s.path} belongs to the folder {recorded}, not {folder}; give another --session")
    finally:
        s.close()


def session_scanner(args: argparse.Namespace, folder: Path):
    """The ``scan`` function for :func:`core.engine.scan_run.scan_to_folder` that scans into
    ``args.session``, reusing its stored scores; an interrupted scan stores no run."""
    from core.engine.session_scan import scan_into_session

    path = Path(args.session).expanduser()

    def scan(detector, source, threshold, progress, cancel):
        with _open(path, folder, mode="rw") as s, _readable(path):
            out = scan_into_session(s, detector, source, threshold=threshold, progress=progress, cancel=cancel,
                                    keep_partial=True)
        where = f"run {out.run_id}" if out.run_id is not None else "nothing stored"
        info(f"session {path}: {where}, {out.describe()}", args.quiet)
        return out.result

    return scan


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A session damaged on disk, or by hand, is one line naming the file (exit 2), whatever
    layer finds it (SQLite's "malformed", a bad blob or JSON)."""
    import sqlite3

    from core.session import SchemaError, SessionError

    try:
        yield
    except (SessionError, SchemaError) as exc:
        raise UsageError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"session {path} is damaged ({exc})") from None


def _write_error(exc: OSError, what: str) -> Exception:
    """A place that cannot be written (no permission, read-only, a file in the way) is a usage
    error (exit 2); anything else (a full disk) a runtime failure (exit 1); one line either way."""
    import errno

    text = f"{what}: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UsageError(text)
    return OSError(text)


def _run_arg(s, args: argparse.Namespace) -> int:
    from core.session import SessionError

    try:
        return s.run(args.run).id
    except SessionError as exc:
        raise UsageError(str(exc)) from None


def cmd_report(args: argparse.Namespace) -> int:
    from core.session.report import write_report

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out must be a file, not a folder: {out}")
    session = _session_file(args.session)
    with _open(session) as s, _readable(session):
        run_id = _run_arg(s, args)
        try:
            path = write_report(s, out, run_id, max_images=args.max_images, redact=args.redact)
        except OSError as exc:
            raise _write_error(exc, f"cannot write the report {out}") from None
        status = s.review_status(run_id)
    info(f"wrote {path} (run {run_id}: {status.n_images} images, {status.n_flagged} flagged, {status.describe()})",
          args.quiet)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from core.session.export import export_session

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, not a file: {out}")
    from core.io.run_folder import OutputFolderError

    session = _session_file(args.session)
    with _open(session) as s, _readable(session):
        try:
            written = export_session(s, out, _run_arg(s, args), heatmaps=not args.no_heatmaps,
                                     overwrite=args.overwrite)
        except OutputFolderError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise _write_error(exc, f"cannot write the export into {out}") from None
    info(f"wrote {', '.join(str(p) for p in written.values())}", args.quiet)
    return EXIT_OK
