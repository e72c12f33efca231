"""The model in memory, as plain Python (no Qt): which detector, with which settings, and
whether it is the one the detector panel asks for.

Tested without a window in ``tests/app/test_rooms.py``.
"""

from __future__ import annotations

from typing import Optional

from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.registry import make_config
from core.results.threshold import Threshold, calibrate


class ModelState:
    def __init__(self) -> None:
        self.detector: Optional[Detector] = None

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
