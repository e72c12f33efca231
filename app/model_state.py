"""The model in memory, as plain Python (no Qt): which detector, with which settings, which
folder it belongs to and which good images it was trained on, and whether it is the one the
detector panel asks for.

A model *belongs* to the inspected folder it was trained for, opened for, or kept with in the
folder's session (:meth:`ModelState.bind`), together with the good-images folder in force then.
Changing the good-images field afterwards makes it stale (Run trains a new one); using it on
another folder needs the inspector's yes (:meth:`ModelState.question` names both).

Tested without a window in ``tests/app/test_rooms.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.registry import REGISTRY, make_config
from core.results.self_check import SelfCheck
from core.results.threshold import Threshold, calibrate


def _same(a: Optional[Path], b: Optional[Path]) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return a == b


class ModelState:
    def __init__(self) -> None:
        self.detector: Optional[Detector] = None
        self.folder: Optional[Path] = None  # the inspected folder it belongs to (None: none yet)
        self.good: Optional[Path] = None  # the good-images folder in force when it became the folder's
        self.fingerprint = ""  # of its weights, once known (kept in a session)

    def bind(self, detector: Optional[Detector], folder: Optional[Path], good: Optional[Path],
             fingerprint: str = "") -> None:
        """``detector`` is the model in memory now, the one of ``folder`` with the good images ``good``."""
        self.detector, self.folder, self.good, self.fingerprint = detector, folder, good, fingerprint

    def trained_on(self) -> Optional[Path]:
        """The good images it learnt from, as far as known."""
        det = self.detector
        value = det.meta.get("good_folder") if det is not None else None
        return Path(value) if isinstance(value, str) and value else self.good

    def stale_good(self, good: Optional[Path]) -> bool:
        """Whether the good-images field changed since the model became the folder's."""
        return self.detector is not None and not self.detector.zero_shot and self.good is not None and \
            not _same(self.good, good)

    def foreign(self, folder: Optional[Path]) -> bool:
        """Whether the model belongs to another inspected folder than ``folder``."""
        return self.detector is not None and not self.detector.zero_shot and self.folder is not None and \
            folder is not None and not _same(self.folder, folder)

    def question(self, folder: Path, good: Optional[Path]) -> str:
        """The question to ask before scoring ``folder`` with a model that is not its own."""
        det, on = self.detector, self.trained_on()
        own = f"trained on {on}" if on is not None else "trained on good images not recorded"
        mine = f"its good images are {good}" if good is not None else "no good images are chosen for it"
        return (f"The model in memory, {det.name}, belongs to {self.folder} ({own}).\n\n"
                f"Score {folder} with it? ({mine}.)\n\nNo: nothing is scored; choose this folder's good images "
                "and press Run to train its own model.")

    def plan(self, name: str, overrides: dict, fpr: float, folder: Optional[Path], good: Optional[Path],
             good_problem: str) -> str:
        """What Run does: "scan" with the model in memory; "train" a new one first; "ask" before using
        a model that is not ``folder``'s (another folder's, or one trained on other good images while
        none are chosen); "blocked" while the good images chosen (``good_problem``) cannot be used."""
        if not self.matches(name, overrides, fpr):
            return "train"
        if REGISTRY[name].zero_shot:
            return "scan"
        if self.stale_good(good):
            return "ask" if good is None else "blocked" if good_problem else "train"
        return "ask" if self.foreign(folder) else "scan"

    def describe(self, short: bool = False) -> str:
        """What the model in memory is, in a few words (the detector panel shows it; ``short``:
        folders by their last two names)."""
        det = self.detector
        if det is None:
            return ""
        n = det.meta.get("n_train")
        on = self.trained_on()

        def name(p: Path) -> str:
            return "/".join(p.parts[-2:]) if short else str(p)

        return (f"Model: {det.name}" + (f", trained on {n} images" if n else "")
                + (f" of {name(on)}" if on is not None else "")
                + (f" for {name(self.folder)}" if self.folder is not None else ""))

    def quality(self) -> tuple[str, str]:
        """(a few words, the full sentences) on what the model is and how well it sees synthetic
        defects (its self-check: no real defect needed); ("", "") without a model."""
        det = self.detector
        if det is None:
            return "", ""
        check = det.meta.get("self_check")
        result = SelfCheck.from_dict(check) if isinstance(check, dict) else None
        full = det.describe_model() + (f"\n{result.describe()}" if result is not None else "")
        return (result.short() if result is not None else ""), full

    @property
    def threshold(self) -> Optional[Threshold]:
        return self.detector.threshold if self.detector is not None else None

    def matches(self, name: str, overrides: dict, fpr: Optional[float] = None) -> bool:
        """Whether the model in memory is ``name`` with exactly these settings (and, given
        ``fpr``, a threshold calibrated at that false-positive rate)."""
        det = self.detector
        if det is None or det.name != name:
            return False
        thr = det.threshold
        if fpr is not None and thr is not None and thr.method == "calibrated" and abs((thr.fpr or 0.0) - fpr) > 1e-12:
            return False
        try:
            return det.config == make_config(name, overrides)
        except ConfigError:
            return False

    def recalibrated(self, fpr: float) -> tuple[Optional[Threshold], str]:
        """The model's threshold re-calibrated at ``fpr`` on the held-out good scores it keeps (no
        retraining, no rescoring): ``(threshold, "")``, or ``(None, why not)`` ("" when there is
        nothing to do)."""
        det = self.detector
        thr = det.threshold if det is not None else None
        if det is None or det.zero_shot or thr is None or thr.method != "calibrated":
            return None, ""
        if thr.fpr is not None and abs(thr.fpr - fpr) < 1e-12:
            return None, ""
        if not thr.calibration_scores:
            return None, "This model keeps no held-out scores to re-calibrate on: retrain it for a new FPR."
        new = calibrate(thr.calibration_scores, fpr)
        new.settings = thr.settings
        return new, ""
