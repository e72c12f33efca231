"""Training, saving and opening models: the main tasks around the model in memory.

The model itself and what it was trained for are :class:`~app.model_state.ModelState`'s (plain
Python); this room runs the jobs and says when a model is ready (``ready``), and the controller
makes it the one in force.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.job_tracker import JobTracker
from app.model_state import ModelState
from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.registry import REGISTRY, create_detector, load_model, make_config
from core.engine.jobs import CallableJob, FitJob, FitOutcome
from core.engine.workflows import TrainReport
from core.results.threshold import DEFAULT_FPR, Threshold

LogFn = Callable[[str, str], None]


class ModelRoom(QObject):
    ready = Signal(object, str, bool)  # Detector, where it came from, whether a scan follows
    hand_threshold_saved = Signal(str)  # the model folder now holding the hand-set threshold

    def __init__(self, jobs: JobTracker, log: LogFn, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self.log = jobs, log
        self.state = ModelState()
        self.good_folder: Optional[Path] = None

    @property
    def detector(self) -> Optional[Detector]:
        return self.state.detector

    def restore_good(self, kept: Optional[Path], before: Optional[Path], now: Path) -> Optional[str]:
        """The good images belong to the inspected folder: ``now``'s session's (``kept``) come back;
        ``before``'s are not carried to another folder (emptied); a first folder keeps the ones given
        (``gui --good``). Returns the field's new text, or None to leave it."""
        if kept is not None:
            self.good_folder = kept
            return str(kept)
        if before is not None and before != now and self.good_folder is not None:
            self.log("info", f"The good images {self.good_folder} were {before}'s: choose {now}'s (Detector panel).")
            self.good_folder = None
            return ""
        return None

    def decide_run(self, plan: str, folder: Path, ask: Callable[[str, str], bool]) -> Optional[str]:
        """Run's :meth:`ModelState.plan` made final: "scan", "train", or None (nothing to do; said why)."""
        m = self.state
        if plan == "blocked":
            self.log("error", f"Cannot run: the {self.good_folder_problem()} (the model in memory was trained on "
                              f"{m.trained_on()})")
            return None
        if plan != "ask":
            return plan
        if ask("Use another folder's model?", m.question(folder, self.good_folder)):
            m.bind(m.detector, folder, self.good_folder, m.fingerprint)
            self.log("info", f"Scoring {folder} with the {m.detector.name} model of another folder, as asked.")
            return "scan"
        if self.good_folder_problem():
            self.log("info", f"Not scored: the model in memory is not {folder}'s; choose its good images to train its own.")
            return None
        return "train"

    def good_folder_problem(self) -> str:
        """Why the good folder cannot be trained on ("" when it can)."""
        g = self.good_folder
        if g is None:
            return "no folder of good images chosen"
        if not g.exists():
            return f"good-image folder not found: {g}"
        if not g.is_dir():
            return f"good-image path is not a folder: {g}"
        return ""

    def train(self, name: str, overrides: dict, fpr: float = DEFAULT_FPR, device: str = "auto",
              then_scan: bool = False) -> bool:
        """Train a fresh ``name`` detector on the good folder; a zero-shot one is only built."""
        try:
            make_config(name, overrides)
            cls = REGISTRY[name]
        except (ConfigError, KeyError) as exc:
            self.log("error", f"Settings not valid: {exc}")
            return False
        ok, reason = cls.availability()
        if not ok:
            self.log("error", f"{name} is unavailable here: {reason}")
            return False
        if cls.zero_shot:
            job = CallableJob(lambda p, c, e: FitOutcome(create_detector(name, overrides, device),
                                                         TrainReport(0, 0, None, [], 0.0)),
                              title=f"Preparing {name}")
        else:
            if self.good_folder is None:
                self.log("error", f"{name} learns from good images: choose the folder of good (defect-free) parts "
                                  "under 'Good images' in the Detector panel first, or open a saved model.")
                return False
            problem = self.good_folder_problem()
            if problem:
                self.log("error", f"Cannot train {name}: {problem}")
                return False
            job = FitJob(name, self.good_folder, overrides=overrides, device=device, fpr=fpr)
        self.jobs.submit(job, "fit", lambda out: self._fitted(out, then_scan), main=True,
                         on_failure=lambda msg, tb: self.log("error", f"Training failed: {msg}"),
                         on_cancel=lambda: self.log("warning", "Training cancelled; the previous model is kept."))
        return True

    def _fitted(self, outcome: FitOutcome, then_scan: bool) -> None:
        rep = outcome.report
        for s in rep.skipped:
            self.log("warning", f"Skipped good image {s.path}: {s.reason}")
        det = outcome.detector
        if det.zero_shot:
            self.log("info", f"{det.name} set up: zero-shot, so it needs no good images; whatever it learns, it "
                             "learns from the batch while it scans")
            source = ""
        else:
            thr = rep.threshold.describe() if rep.threshold else "no threshold"
            self.log("info", f"Trained {det.name} on {rep.n_train} good images in {rep.fit_seconds:.1f} s; {thr}")
            source = "trained now"
        self.ready.emit(det, source, then_scan)

    def save(self, folder: str | os.PathLike, hand: Optional[Threshold], store_hand_threshold: bool) -> bool:
        """Save the model in memory. With a threshold set by hand (``hand``) in force,
        ``store_hand_threshold`` saves that one (the model records it as set by hand); otherwise
        the model keeps its own and the log says the hand-set one was not saved."""
        det = self.detector
        if det is None or not det.fitted:
            self.log("error", "No trained model to save: train one or open a saved model first.")
            return False
        out = Path(folder)
        before = det.threshold
        if hand is not None and store_hand_threshold:
            det.threshold = dataclasses.replace(hand, settings=det.config.to_dict())

        def saved(path) -> None:
            self.log("info", f"Saved {det.name} model to {path}; {det.threshold.describe() if det.threshold else ''}")
            if hand is None:
                return
            if store_hand_threshold:  # the model holds it now: it is the model's threshold
                self.hand_threshold_saved.emit(out.name)
            else:
                self.log("warning", f"The hand-set threshold {hand.value:.6g} was not saved with the model; the "
                                    f"saved model keeps {before.describe() if before else 'no threshold'}.")

        def failed(msg: str, _tb: str) -> None:
            det.threshold = before
            self.log("error", f"Could not save the model: {msg}")

        self.jobs.submit(CallableJob(lambda p, c, e: det.save(out), title=f"Saving model to {out}"), "save",
                         saved, main=True, on_failure=failed)
        return True

    def open(self, folder: str | os.PathLike, device: str = "auto") -> bool:
        src = Path(folder)

        def loaded(det: Detector) -> None:
            thr = det.threshold.describe() if det.threshold else "no threshold"
            self.log("info", f"Opened {det.name} model from {src} (runs on {det.runtime}); {thr}")
            self.ready.emit(det, f"from the model {src.name}", False)

        self.jobs.submit(CallableJob(lambda p, c, e: load_model(src, device), title=f"Loading model {src}"), "load",
                         loaded, main=True, on_failure=lambda msg, tb: self.log("error", f"Could not open the model: {msg}"))
        return True
