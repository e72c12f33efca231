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
        return cls(
            value=float(data["value"]),
            method=str(data.get("method", "explicit")),
            fpr=data.get("fpr"),
            n_calibration=int(data.get("n_calibration", 0)),
            calibration_scores=[float(s) for s in data.get("calibration_scores", [])],
            settings=dict(data["settings"]) if data.get("settings") is not None else None,
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
