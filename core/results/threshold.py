"""The decision threshold: calibrated on held-out normal images, or given explicitly.

Calibration picks the smallest threshold whose false-positive rate on the held-out normal
scores is at most ``fpr`` (a score strictly above the threshold is flagged). With fewer
held-out images than ``1 / fpr`` that is the largest held-out score: the tool then flags
nothing it has seen as normal, and says how many images the calibration rests on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_FPR = 0.01
CALIBRATION_FRACTION = 0.10
CALIBRATION_MINIMUM = 3


@dataclass
class Threshold:
    value: float
    method: str  # "calibrated" | "explicit"
    fpr: float | None = None
    n_calibration: int = 0
    calibration_scores: list[float] = field(default_factory=list)
    #: The detector settings the scores were computed with (None: not recorded, older model).
    settings: dict[str, Any] | None = None

    def flags(self, score: float) -> bool:
        return bool(score > self.value)

    def describe(self) -> str:
        if self.method == "explicit":
            return f"threshold {self.value:.6g} (set by hand)"
        return (
            f"threshold {self.value:.6g} (calibrated at FPR {self.fpr:g} on "
            f"{self.n_calibration} held-out normal images)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": float(self.value),
            "method": self.method,
            "fpr": self.fpr,
            "n_calibration": self.n_calibration,
            "calibration_scores": [float(s) for s in self.calibration_scores],
            "settings": dict(self.settings) if self.settings is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        """Read a saved threshold, validating every field (a model file is untrusted input):
        raises ``ValueError`` naming the field for a non-finite value, an FPR outside [0, 1),
        a negative count or a non-number among the calibration scores."""
        if not isinstance(data, dict):
            raise ValueError("threshold is not a mapping")

        def number(key: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"threshold {key} is not a number: {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"threshold {key} is not a finite number: {v}")
            return float(v)

        value = number("value", data.get("value"))
        method = data.get("method", "explicit")
        if method not in ("calibrated", "explicit"):
            raise ValueError(f"threshold method {method!r} is neither 'calibrated' nor 'explicit'")
        fpr = data.get("fpr")
        if fpr is not None:
            fpr = number("fpr", fpr)
            if not 0.0 <= fpr < 1.0:
                raise ValueError(f"threshold fpr {fpr} is not in [0, 1)")
        n_cal = data.get("n_calibration", 0)
        if isinstance(n_cal, bool) or not isinstance(n_cal, int) or n_cal < 0:
            raise ValueError(f"threshold n_calibration {n_cal!r} is not a count")
        scores = data.get("calibration_scores", [])
        if not isinstance(scores, list):
            raise ValueError("threshold calibration_scores is not a list")
        settings = data.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError("threshold settings is not a mapping")
        return cls(
            value=value,
            method=str(method),
            fpr=fpr,
            n_calibration=n_cal,
            calibration_scores=[number("calibration score", s) for s in scores],
            settings=dict(settings) if settings is not None else None,
        )

    @classmethod
    def explicit(cls, value: float) -> Threshold:
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, not {value}")
        return cls(value=float(value), method="explicit")


def calibrate(scores: Sequence[float], fpr: float = DEFAULT_FPR) -> Threshold:
    """Threshold such that at most ``fpr`` of ``scores`` (normal images) lie above it."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), not {fpr}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite calibration scores")
    n = s.size
    allowed = int(math.floor(fpr * n + 1e-9))  # how many normal images may be flagged
    value = float(s[n - 1 - allowed])
    return Threshold(value=value, method="calibrated", fpr=float(fpr), n_calibration=int(n),
                     calibration_scores=[float(x) for x in s])


def split_calibration(n: int, fraction: float = CALIBRATION_FRACTION, minimum: int = CALIBRATION_MINIMUM,
                      seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` normal images into (train, held-out calibration) indices."""
    n_cal = max(minimum, int(round(fraction * n)))
    if n - n_cal < 1:
        raise ValueError(
            f"{n} good images are too few: {n_cal} are held out to calibrate the threshold and at least one "
            "more is needed to train (add good images, or give the threshold explicitly)"
        )
    perm = np.random.default_rng(seed).permutation(n)
    cal = sorted(int(i) for i in perm[:n_cal])
    train = sorted(int(i) for i in perm[n_cal:])
    return train, cal
