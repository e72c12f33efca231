"""The review in the window: verdict keys and buttons, notes, "this one is normal", the "to review"
walk and its counters, the ROC of the verdicts, and opening, saving and reopening sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtWidgets import QFileDialog, QMessageBox

from app.curves_dialog import CurvesDialog
from core.detectors.config import ConfigError
from core.detectors.registry import REGISTRY, make_config
from core.session import SessionError, open_session


class ReviewMixin:
    """Review and session slots of :class:`~app.main_window.MainWindow`."""

    # ================================================================== review
    def set_verdict(self, verdict: Optional[str]) -> bool:
        """The verdict keys and buttons: ``verdict`` for the image shown."""
        path = self.gallery.current_path()
        if path is None:
            return False
        return self.controller.set_verdict(path, verdict)

    def _note_edited(self, text: str) -> None:
        path = self.review.path
        if path is not None and text != self.controller.note(path) and self.controller.set_note(path, text):
            self.review.show_note_saved()

    def mark_normal(self) -> bool:
        path = self.gallery.current_path()
        return path is not None and self.controller.mark_normal(path)

    def toggle_to_review(self) -> None:
        self.gallery.review_check.setChecked(not self.gallery.review_check.isChecked())
        self.gallery.view.setFocus()

    def _review_filter_toggled(self, on: bool) -> None:
        self.gallery.model.set_review_only(self.controller.review_queue() if on else None)
        self.controller.remember("to_review", on)
        if on and not self._restoring:
            self.gallery.select_row(0)  # the walk starts at the highest score

    def _counts_changed(self, counts) -> None:
        """Every count on screen from the controller's one :class:`~core.results.review.ReviewCounts`:
        the gallery header and ≠ marks, the histogram's "flagged", the review counters and the walk."""
        c = self.controller
        self.gallery.set_counts(counts)
        self.histogram.set_counts(counts)
        if self.gallery.review_check.isChecked():
            self.gallery.model.set_review_only(list(counts.queue))
        self.review.show_counters(counts.describe() if c.session is not None and c.run_id is not None else
                                  "no stored run" if c.result is None or c.session is None else "not stored",
                                  counts.band_warning)

    def _review_changed(self) -> None:
        """Verdicts, notes or the band changed: tiles, the band and the note follow (the counts
        follow through :meth:`_counts_changed`)."""
        c = self.controller
        self.gallery.model.set_verdicts(c.verdicts())
        self.gallery.model.set_normal(c.review.normal())
        band = c.band
        self.histogram.set_band(band.low if band else None, band.high if band else None)
        if band is not None:
            self.review.show_band(band.low, band.high)
        elif c.result is not None and c.result.rows and c.threshold is not None:  # a start for typing one
            scores = [r.score for r in c.result.rows]
            margin = (max(scores) - min(scores)) * 0.05
            self.review.show_band(c.threshold.value - margin, c.threshold.value + margin)
        path = self.gallery.current_path()
        self.review.show_image(path, c.verdict(path) if path else None, c.note(path) if path else "")

    def show_curves(self) -> CurvesDialog:
        """ROC / precision-recall from the verdicts, with the threshold for a chosen recall (not modal)."""
        if self._curves is None:
            self._curves = CurvesDialog(self)
            self._curves.recall_changed.connect(lambda _r: self._update_curves())
            self._curves.apply_requested.connect(
                lambda value, recall: self.controller.set_threshold(value, f"set from the verdict ROC at recall {recall:g}"))
            self.controller.review_changed.connect(self._update_curves)
            self.controller.result_changed.connect(lambda _r: self._update_curves())
        self._update_curves()
        self._curves.show()
        return self._curves

    def _update_curves(self) -> None:
        if self._curves is not None:
            self._curves.show_curves(*self.controller.verdict_curves(self._curves.recall.value()))

    def review_counters(self) -> str:
        return self.review.counters.text()

    def _session_changed(self, session) -> None:
        self.review.set_read_only(session.read_only_reason if session is not None and session.read_only else "")
        if session is not None:
            self.settings.setValue("session/last", str(session.path))
            self.settings.setValue("session/last_folder", str(session.folder or ""))
        self._sync_actions()

    def _session_restored(self, state: dict) -> None:
        """Sort, filters and selection as they were when the session was last used."""
        self._restoring = state or {"restoring": True}
        try:
            name, settings = state.get("run_detector"), state.get("run_settings") or {}
            if name in REGISTRY and REGISTRY[name].availability()[0] and self.controller.detector is None:
                try:  # the detector and settings of the run shown (a model in memory keeps its own)
                    config = make_config(name, settings)
                except (ConfigError, TypeError, ValueError):
                    config = None
                self.detector_panel.select_detector(name, config)
            if "sort" in state:
                self.gallery.set_sort_by_score(state["sort"] == "score")
            if "flagged_only" in state:
                self.gallery.set_flagged_only(bool(state["flagged_only"]))
            if "to_review" in state:
                self.gallery.review_check.setChecked(bool(state["to_review"]))
            if state.get("selection"):
                self.gallery.select_path(Path(state["selection"]))
        finally:
            self._restoring = {}

    def _remember_selection(self) -> None:
        self._selection_timer.stop()
        path = self.gallery.current_path()
        if path is not None:
            self.controller.remember("selection", str(path))

    def open_session_file(self, path: Optional[str] = None, folder: Optional[str] = None) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open a session", str(Path.home()), "Sessions (*.db)")
            if not path:
                return False
        if not self.confirm_discard(f"Open {path}"):
            return False
        return self.controller.open_session_file(path, folder)

    def reopen_last_session(self) -> bool:
        """Open the session used last (the app offers it when it starts)."""
        folder = self.settings.value("session/last_folder", "", type=str)
        if not folder or not Path(folder).is_dir():
            self.controller.log("warning", "No last session to reopen.")
            return False
        if not self.confirm_discard(f"Reopen {folder}"):
            return False
        last = self.settings.value("session/last", "", type=str)
        if last and Path(last).is_file():
            return self.controller.open_session_file(last, folder)
        self.controller.open_folder(folder)
        return True

    def offer_last_session(self) -> bool:
        """At start: offer to reopen the last session; True when it is being reopened."""
        folder = self.settings.value("session/last_folder", "", type=str)
        if not folder or not Path(folder).is_dir():
            return False
        answer = QMessageBox.question(self, "Reopen the last session?",
                                      f"Reopen the session of {folder}?\n\nIt holds {self._session_summary()}.",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
        return answer == QMessageBox.Yes and self.reopen_last_session()

    def _session_summary(self) -> str:
        """What the last session really holds, read from its file (read-only, beside any writer)."""
        last = self.settings.value("session/last", "", type=str)
        try:
            with open_session(last, mode="ro") as s:
                return s.summary()
        except (SessionError, OSError) as exc:
            return f"what it holds cannot be read ({exc})"

    def save_session_as(self, path: Optional[str] = None) -> bool:
        c = self.controller
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save session as", str(Path.home() / "session.db"),
                                                  "Sessions (*.db)")
            if not path:
                return False  # the file dialog asked before replacing
        return c.save_session_as(path)

    def export_report(self, path: Optional[str] = None, overwrite: Optional[bool] = None) -> bool:
        c = self.controller
        if path is None:
            start = self.settings.value("export/last_dir", str(Path.home()), type=str)
            path, _ = QFileDialog.getSaveFileName(self, "Write the HTML report", str(Path(start) / "report.html"),
                                                  "HTML (*.html)")
            if not path:
                return False
            overwrite = True  # the file dialog asked
        target = Path(path)
        if target.exists() and not overwrite:
            if overwrite is None and self._ask_overwrite("the report", target.parent, [target]):
                return c.export_report(target)
            c.log("info", f"Report not written: {target} exists.")
            return False
        return c.export_report(target)
