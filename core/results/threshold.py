"""The decision threshold: calibrated on held-out normal images, or given explicitly.

Calibration picks the smallest threshold whose false-positive rate on the held-out normal
scores is at most ``fpr`` (a score strictly above the threshold is flagged). With fewer
held-out images than ``1 / fpr`` that is the largest held-out score: the tool then flags
nothing it has seen as normal, and says how many images the calibration rests on.

**What n scores support.** From n normal scores the lowest false-positive rate that can be
told apart from zero is about 1/n: asking for 0.01 on 3 held-out images gives the largest of
three scores, whose real FPR on new good images is about 1/(n+1) = 25 % on average (the
expected exceedance of the maximum of n draws) and varies widely. :meth:`Threshold.support_warning`
says so in words the CLI prints and the GUI can show; :meth:`Threshold.describe` carries a
short form of it.

**Better estimates.** ``estimator="tail"`` fits a log-normal (all scores positive) or normal
distribution to the normal scores and reads the threshold at ``1 - fpr`` from the fit, which
extrapolates beyond the largest score; with more scores (cross-calibration, see
:func:`core.engine.workflows.train_detector`) both estimates improve. docs/reliability.md
measures them against the FPR seen on unseen good images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_FPR = 0.01
ESTIMATORS = ("empirical", "tail")
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
    #: How the value was read from the scores: "empirical" (order statistic) or "tail" (fit).
    estimator: str = "empirical"
    #: Where the calibration scores came from: "holdout" or "kfold-K" (cross-calibration).
    scheme: str = "holdout"

    @property
    def min_supported_fpr(self) -> float | None:
        """About the lowest FPR that ``n_calibration`` scores can estimate (1/n); None if not calibrated."""
        if self.method != "calibrated" or self.n_calibration < 1:
            return None
        return 1.0 / self.n_calibration

    def support_warning(self) -> str:
        """A warning when the target FPR is below what the calibration scores support, else "".

        The empirical estimate cannot go below about 1/n; a fitted tail can, but rests on its
        assumption, so it is warned about below 1/(10 n).
        """
        low = self.min_supported_fpr
        if low is None or self.fpr is None:
            return ""
        n = self.n_calibration
        need = math.ceil(1.0 / self.fpr) if self.fpr > 0 else None
        if self.estimator == "tail":
            if self.fpr >= low / 10:
                return ""
            return (f"target FPR {self.fpr:g} is far below what {n} calibration images support (about {low:.2g}); "
                    "the fitted tail is an extrapolation: check the false-positive rate on new good images")
        if self.fpr >= low:
            return ""
        return (f"target FPR {self.fpr:g} is below what {n} calibration images can support (about 1/{n} = {low:.2g}): "
                f"the threshold is simply the highest of their scores, and new good images will be flagged more often "
                f"than {self.fpr:g}" + (f" (to estimate {self.fpr:g} directly, about {need} are needed)" if need else "")
                + "; use more good images, cross-calibration (--calibration kfold) or a fitted tail (--tail)")

    def flags(self, score: float) -> bool:
        return bool(score > self.value)

    def calibrated_on(self, images: str = "normal") -> str:
        """What a calibrated threshold rests on, e.g. "calibrated at FPR 0.01 on 40 normal images
        (kfold-5 cross-calibration), fitted tail" (``images``: the word for the good images)."""
        how = f"held-out {images} images" if self.scheme == "holdout" else f"{images} images ({self.scheme} cross-calibration)"
        tail = ", fitted tail" if self.estimator == "tail" else ""
        return f"calibrated at FPR {self.fpr:g} on {self.n_calibration} {how}{tail}"

    def describe(self) -> str:
        if self.method == "explicit":
            return f"threshold {self.value:.6g} (set by hand)"
        caveat = ""
        if self.support_warning():
            caveat = f"; too few for that FPR, about {self.min_supported_fpr:.2g} is the lowest they support"
        return f"threshold {self.value:.6g} ({self.calibrated_on()}{caveat})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": float(self.value),
            "method": self.method,
            "fpr": self.fpr,
            "n_calibration": self.n_calibration,
            "calibration_scores": [float(s) for s in self.calibration_scores],
            "settings": dict(self.settings) if self.settings is not None else None,
            "estimator": self.estimator,
            "scheme": self.scheme,
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
        estimator, scheme = data.get("estimator", "empirical"), data.get("scheme", "holdout")
        if estimator not in ESTIMATORS:
            raise ValueError(f"threshold estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if not isinstance(scheme, str) or not (scheme == "holdout" or scheme.startswith("kfold-")):
            raise ValueError(f"threshold scheme {scheme!r} is neither 'holdout' nor 'kfold-K'")
        return cls(
            value=value,
            method=str(method),
            fpr=fpr,
            n_calibration=n_cal,
            calibration_scores=[number("calibration score", s) for s in scores],
            settings=dict(settings) if settings is not None else None,
            estimator=estimator,
            scheme=scheme,
        )

    @classmethod
    def explicit(cls, value: float) -> Threshold:
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, not {value}")
        return cls(value=float(value), method="explicit")


def tail_quantile(scores: Sequence[float], fpr: float) -> float:
    """The ``1 - fpr`` quantile of a log-normal (all scores > 0) or normal fit to ``scores``."""
    from statistics import NormalDist

    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 2:
        raise ValueError("a fitted tail needs at least 2 finite scores")
    z = NormalDist().inv_cdf(1.0 - fpr) if fpr > 0 else NormalDist().inv_cdf(1.0 - 1e-9)
    if s.min() > 0:
        x = np.log(s)
        return float(np.exp(x.mean() + z * x.std(ddof=1)))
    return float(s.mean() + z * s.std(ddof=1))


def calibrate(scores: Sequence[float], fpr: float = DEFAULT_FPR, estimator: str = "empirical",
              scheme: str = "holdout") -> Threshold:
    """Threshold such that at most ``fpr`` of ``scores`` (normal images) lie above it
    (``estimator="empirical"``), or the ``1 - fpr`` quantile of a fitted tail (``"tail"``)."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), not {fpr}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite calibration scores")
    n = s.size
    if estimator == "tail" and n < 2:
        estimator = "empirical"
    if estimator == "tail":
        value = tail_quantile(s, fpr)
    else:
        allowed = int(math.floor(fpr * n + 1e-9))  # how many normal images may be flagged
        value = float(s[n - 1 - allowed])
    return Threshold(value=value, method="calibrated", fpr=float(fpr), n_calibration=int(n),
                     calibration_scores=[float(x) for x in s], estimator=estimator, scheme=scheme)


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
