"""What the inspector asks of the window: open a folder, choose the good images and the detector,
train, run, cancel, export, save and open models, close. Dialogs ask here; the controller works.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QTimer, QUrl
from PySide6.QtGui import QCloseEvent, QDesktopServices
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app.controller import EXPORT_KINDS
from core.detectors.registry import REGISTRY
from core.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from core.results.threshold import DEFAULT_FPR


class CommandsMixin:
    """User commands of :class:`~app.main_window.MainWindow`."""

    # ================================================================== user commands
    def open_folder(self, folder: Optional[str] = None, recursive: Optional[bool] = None) -> None:
        if folder is None:
            start = self.recent_folders()[0] if self.recent_folders() else str(Path.home())
            folder = QFileDialog.getExistingDirectory(self, "Open a folder of images", start)
            if not folder:
                return
        if not self.confirm_discard(f"Open {folder}"):
            return
        include, exclude = self.folder_panel.patterns()
        self.controller.open_folder(folder, recursive, include, exclude)

    def confirm_discard(self, action: str) -> bool:
        """Whether work that is not kept in a session may be dropped for ``action``: asks when
        there is some (never silently), True when there is none."""
        what = self.controller.unsaved()
        if not what or not self.ask_before_discarding:
            return True
        answer = QMessageBox.question(self, "Discard unsaved work?",
                                      f"{action}: {what} would be lost.\n\nDiscard them?",
                                      QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Cancel)
        return answer == QMessageBox.Discard

    def _subfolders_clicked(self, on: bool) -> None:
        if self.controller.folder is not None:
            self.controller.open_folder(self.controller.folder.folder, on, *self.folder_panel.patterns())

    def _patterns_changed(self) -> None:
        """The include / exclude patterns changed: list the open folder again with them."""
        info = self.controller.folder
        if info is not None and self.confirm_discard(f"List {info.folder} again"):
            self.controller.open_folder(info.folder, info.recursive, *self.folder_panel.patterns())

    def set_good_folder(self, folder: Optional[str]) -> None:
        """Use ``folder`` for training and show it; one that cannot be used is shown as such and
        blocks Train (and Run when Run would train) until it is corrected."""
        folder = (folder or "").strip()
        if self.detector_panel.good_edit.text().strip() != folder:
            self.detector_panel.set_good_folder(folder)  # -> _good_folder_edited
        self._good_folder_edited(folder)
        problem = self.controller.good_folder_problem() if folder else ""
        if problem:
            self.controller.log("error", f"{problem[0].upper()}{problem[1:]}: Train is blocked until it is corrected")
        else:
            self.controller.keep_good_folder()  # the open folder's session keeps it

    def _good_folder_edited(self, folder: str) -> None:
        self.controller.set_good_folder(folder or None)
        self._update_model_state()

    def _browse_good(self) -> None:
        start = str(self.controller.good_folder or (self.controller.folder.folder if self.controller.folder else ""))
        folder = QFileDialog.getExistingDirectory(self, "Folder of good (defect-free) images", start)
        if folder:
            self.set_good_folder(folder)

    def select_detector(self, name: str) -> None:
        self.detector_panel.select_detector(name)

    def train(self) -> bool:
        p = self.detector_panel
        self.gallery.view.setFocus()  # the keys belong to the gallery again, not to the last field edited
        return self.controller.train(p.current_name(), p.overrides(), p.fpr(), p.device())

    def run_detector(self) -> bool:
        p = self.detector_panel
        self.gallery.view.setFocus()
        return self.controller.run(p.current_name(), p.overrides(), p.fpr(), p.device())

    def request_cancel(self, confirm: Optional[bool] = None) -> bool:
        """Esc: cancel the running task after confirmation (``confirm`` answers it in advance).

        The task keeps running while the question is open; if it has ended by the time the
        answer comes, nothing is cancelled and the window says so."""
        c = self.controller
        if not c.busy:
            return False
        operation, title = c.operation, c.busy_title
        if confirm is None:
            answer = QMessageBox.question(self, "Cancel", f"Stop '{title}'?\n\nIt keeps running while this "
                                          "question is open.", QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            confirm = answer == QMessageBox.Yes
        if not confirm:
            return False
        if c.busy and c.operation == operation:  # the same command (a scan after its training included)
            return c.cancel()
        c.log("info", f"'{title}' finished before the cancel was confirmed; nothing was cancelled.")
        return False

    def _ask_yes_no(self, title: str, text: str) -> bool:
        """The controller's questions (e.g. before scoring a folder with another folder's model)."""
        if not self.ask_questions:
            self.controller.log("info", f"{title} No (not asked: {text.splitlines()[0]})")
            return False
        return QMessageBox.question(self, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No) == QMessageBox.Yes

    def _ask_overwrite(self, what: str, folder: Path, existing: list[Path]) -> bool:
        names = "\n".join(f"  {p.relative_to(folder) if p.is_relative_to(folder) else p}" for p in existing[:6])
        more = f"\n  … and {len(existing) - 6} more" if len(existing) > 6 else ""
        answer = QMessageBox.question(self, "Replace files?",
                                      f"Writing {what} to {folder} would replace {len(existing)} file(s):\n"
                                      f"{names}{more}\n\nReplace them?",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def export(self, kind: str, out_dir: Optional[str] = None, overwrite: Optional[bool] = None) -> bool:
        """Export ``kind`` of the complete scan; existing files are only replaced after asking
        (``overwrite`` answers the question in advance)."""
        c = self.controller
        if c.result is None:
            c.log("error", "Nothing to export: run a complete scan first.")
            return False
        if out_dir is None:  # the last export folder (this session or an earlier one), never the data folder
            last = c.last_export_dir or self.settings.value("export/last_dir", "", type=str)
            start = str(last) if last and Path(last).is_dir() else str(Path.home())
            out_dir = QFileDialog.getExistingDirectory(self, f"Export {EXPORT_KINDS[kind]} to folder", start)
            if not out_dir:
                return False
        out = Path(out_dir)
        existing = c.export_targets(kind, out)
        if existing:
            if overwrite is None:
                overwrite = self._ask_overwrite(EXPORT_KINDS[kind], out, existing)
            if not overwrite:
                c.log("info", f"Export of {EXPORT_KINDS[kind]} not written: {out} already holds them.")
                return False
        return c.export(kind, out)

    def save_model(self, folder: Optional[str] = None, overwrite: Optional[bool] = None,
                   store_hand_threshold: Optional[bool] = None) -> bool:
        """Save the model; with a threshold set by hand in force, asks whether to store it with
        the model (``store_hand_threshold`` answers in advance)."""
        c = self.controller
        if c.detector is None:
            c.log("error", "No trained model to save: train one or open a saved model first.")
            return False
        hand, own = c.threshold_override, c.detector.threshold
        if hand is not None and store_hand_threshold is None:
            answer = QMessageBox.question(
                self, "Save the hand-set threshold?",
                f"The threshold in force, {hand.value:.6g}, was set by hand. The model's own threshold is "
                f"{own.describe() if own else 'none'}.\n\nYes: save {hand.value:.6g} with the model (it is recorded "
                "as set by hand).\nNo: save the model with its own threshold.",
                QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
            store_hand_threshold = answer == QMessageBox.Yes
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save the model into folder", str(Path.home()))
            if not folder:
                return False
        existing = [p for p in (Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME) if p.exists()]
        if existing:
            if overwrite is None:
                overwrite = self._ask_overwrite("the model", Path(folder), existing)
            if not overwrite:
                c.log("info", f"Model not saved: {folder} already holds a model.")
                return False
        return c.save_model(folder, store_hand_threshold=bool(store_hand_threshold))

    def open_model(self, folder: Optional[str] = None) -> bool:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a saved model folder", str(Path.home()))
            if not folder:
                return False
        return self.controller.open_model(folder, self.detector_panel.device())

    def open_export_folder(self) -> None:
        if self.controller.last_export_dir is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.controller.last_export_dir)))

    def _fpr_changed(self, fpr: float) -> None:
        """A new target FPR re-calibrates the model in memory on its held-out scores (when it is
        the one the panel shows) instead of asking for a retrain; 0 is refused."""
        c, p = self.controller, self.detector_panel
        if fpr <= 0.0:
            kept = c.detector.threshold.fpr if c.detector is not None and c.detector.threshold is not None \
                and c.detector.threshold.fpr else DEFAULT_FPR
            c.log("warning", f"Target FPR {fpr:g} refused: no threshold flags no good image ever; it stays {kept:g}.")
            p.fpr_spin.blockSignals(True)
            p.fpr_spin.setValue(kept)
            p.fpr_spin.blockSignals(False)
            return
        if c.detector is not None and c.detector_matches(p.current_name(), p.overrides()):
            c.recalibrate(fpr)
        self._update_model_state()

    def _detector_selected(self, name: str) -> None:
        for act in self.detector_group.actions():
            act.setChecked(act.data() == name)
        self._update_model_state()

    def _update_model_state(self) -> None:
        """The detector panel says what the model in memory is and what Run will do with it."""
        c, p = self.controller, self.detector_panel
        name, m, det = p.current_name(), c.models, c.detector
        zero_shot = REGISTRY[name].zero_shot
        plan = c.run_plan(name, p.overrides(), p.fpr())
        problem = "" if zero_shot or c.good_folder is None else c.good_folder_problem()
        if zero_shot:
            text = "Zero-shot: needs no good images; press Run."
            if det is not None and plan != "scan":
                text += f" (The {det.name} model stays in memory until then.)"
            p.set_model_state(text)
        elif plan == "scan":
            thr = c.threshold
            tail = f"; threshold {thr.value:.4g} ({c.threshold_source})" if thr else "; no threshold"
            check, full = m.quality()
            p.set_model_state(m.describe(short=True) + (f"; {check}" if check else "") + tail,
                              details=m.describe() + tail + (f"\n{full}" if full else ""))
        elif plan in ("ask", "blocked") or (det is not None and c.detector_matches(name, p.overrides(), p.fpr())):
            here = c.folder.folder if c.folder is not None else None
            text = (f"Model in memory: {det.name} of {m.folder}, trained on {m.trained_on()}. " if m.foreign(here)
                    else f"Model in memory: {det.name} trained on {m.trained_on()}; the good images are now "
                         f"{c.good_folder or 'not chosen'}. ")
            text += {"ask": "Run asks before scoring this folder with it.",
                     "blocked": f"Run is blocked: the {problem}.", "train": "Run trains a new one."}[plan]
            p.set_model_state(text, stale=True)
        elif det is not None:
            p.set_model_state(f"Model in memory: {det.name} with other settings or target FPR. "
                              + (f"Run would train a new one, but the {problem}." if problem
                                 else "Run trains a new one."), stale=True)
        else:
            p.set_model_state("No model yet: choose the good images and press Train or Run "
                              "(or File > Open model…)." if not problem else f"No model yet, and the {problem}.")
        self.gallery.set_panel_detector(name)
        own = det.threshold if det is not None and plan == "scan" and not zero_shot else None
        full = own.support_warning() if own is not None else ""
        p.set_support_warning(f"{own.n_calibration} held-out images support an FPR of about {own.min_supported_fpr:.2g} "
                              f"at best, not {own.fpr:g}: the threshold is their highest score" if full else "", full)
        p.set_good_state(problem)
        p.set_allowed(train=not problem, run=zero_shot or plan in ("scan", "ask") or (plan == "train" and not problem))
        for act in self.detector_group.actions():
            act.setChecked(act.data() == name)

    # ================================================================== closing
    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing while a task runs asks first; then the task is cancelled and the window stays
        up, drawing the shutdown's progress, until every job has stopped (the UI thread never
        waits on it). A second close during the shutdown waits for it."""
        c = self.controller
        winding_down = self._shutdown_timer is not None
        if c.busy and not winding_down and self.confirm_close_when_busy:
            answer = QMessageBox.question(self, "Quit while working?",
                                          f"'{c.busy_title}' is still running. Cancel it and close?",
                                          QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            if answer != QMessageBox.Yes:
                event.ignore()
                return
            event.ignore()
            self._begin_shutdown(c.busy_title)
            return
        if not winding_down and not c.busy and not self.confirm_discard("Close"):
            event.ignore()
            return
        if winding_down and not self._shutdown_done:
            self._shutdown_timer.stop()  # closed again: wait here for the last jobs
        self._remember_selection()
        self.save_settings()
        c.shutdown()
        super().closeEvent(event)

    def _begin_shutdown(self, title: str) -> None:
        started = time.monotonic()
        self.controller.shutdown(timeout_ms=0)  # cancel everything, start nothing new, do not wait
        for w in (self.gallery, self.image_view, self.histogram, self.grouping):
            w.setEnabled(False)
        self.menuBar().setEnabled(False)
        p = self.detector_panel
        p.set_busy(f"Cancelling '{title}' to close…")
        self.statusBar().showMessage(f"Cancelling '{title}'; the window closes when it has stopped…")

        def poll() -> None:
            if self.controller.runner.is_running():
                p.progress_label.setText(f"Cancelling '{title}' to close… {time.monotonic() - started:.1f} s")
                return
            self._shutdown_timer.stop()
            self._shutdown_done = True
            self.close()

        self._shutdown_timer = QTimer(self)
        self._shutdown_timer.setInterval(50)
        self._shutdown_timer.timeout.connect(poll)
        self._shutdown_timer.start()
