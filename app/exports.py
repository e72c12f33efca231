"""Writing what the window shows: the flagged list, heat maps, the full results and the session's
HTML report, each as a main task. The caller asks before replacing files (:meth:`Exports.targets`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.job_tracker import JobTracker
from app.workers import EXPORT_KINDS, export_targets, write_export
from core.engine.jobs import CallableJob
from core.results import ScanResult
from core.session import Session
from core.session.report import write_report

LogFn = Callable[[str, str], None]


class Exports(QObject):
    exported = Signal(str)  # folder written to

    def __init__(self, jobs: JobTracker, log: LogFn, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self.log = jobs, log
        self.last_dir: Optional[Path] = None

    @staticmethod
    def targets(result: Optional[ScanResult], kind: str, out_dir: str | os.PathLike) -> list[Path]:
        """Files an export of ``kind`` into ``out_dir`` would replace."""
        return export_targets(result.rows if result is not None else [], kind, Path(out_dir))

    def export(self, kind: str, out_dir: str | os.PathLike, result: Optional[ScanResult],
               value_range: tuple[float, float]) -> bool:
        """Write ``kind`` ('flagged', 'heatmaps' or 'results') of the complete scan ``result``."""
        if kind not in EXPORT_KINDS:
            raise ValueError(f"unknown export kind {kind!r}")
        if result is None:
            self.log("error", "Nothing to export: run a complete scan first.")
            return False
        out = Path(out_dir)
        copy = dataclasses.replace(result, rows=[dataclasses.replace(r) for r in result.rows],
                                   skipped=list(result.skipped))
        self.jobs.submit(CallableJob(lambda p, c, e: write_export(kind, out, copy, value_range),
                                     title=f"Exporting {EXPORT_KINDS[kind]} to {out}"), "export",
                         lambda what: self._done(out, what), main=True,
                         on_failure=lambda msg, tb: self.log("error", f"Export failed: {msg}"))
        return True

    def report(self, session: Optional[Session], run_id: Optional[int], out: str | os.PathLike) -> bool:
        """Write the HTML report of ``run_id`` (:func:`core.session.report.write_report`) to ``out``."""
        if session is None or run_id is None:
            self.log("error", "No stored run to report on: run the detector on a folder with a session first.")
            return False
        target = Path(out)
        self.jobs.submit(CallableJob(lambda p, c, e: write_report(session, target, run_id),
                                     title=f"Writing report {target}"), "export",
                         lambda path: self._done(Path(path).parent, f"the report {Path(path).name}"),
                         main=True, on_failure=lambda msg, tb: self.log("error", f"Report failed: {msg}"))
        return True

    def _done(self, out: Path, what: str) -> None:
        self.last_dir = out
        self.log("info", f"Wrote {what} to {out}")
        self.exported.emit(str(out))
