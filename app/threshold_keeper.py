"""The decision threshold in force and every way it changes, as plain Python (no Qt).

A new model's own threshold, a hand-set one, one from the verdict ROC, a re-calibration at another
target FPR or with the images marked normal, a reset: :class:`ThresholdKeeper` decides which is in
force (asking before a hand-set one is replaced), re-flags the rows shown (:class:`~app.view_state.ViewState`)
and records it with the session's run shown, so that the report and the export count with it.
Each method returns whether the threshold in force changed; the controller then tells the views.
Tested without a window in ``tests/app/test_rooms.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from app.model_state import ModelState
from app.review_state import ReviewState
from app.session_state import LogFn, SessionState
from app.view_state import ViewState
from core.detectors.base import Detector
from core.results import ScanResult
from core.results.threshold import Threshold


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


class ThresholdKeeper:
    def __init__(self, state: ViewState, models: ModelState, sessions: SessionState, review: ReviewState,
                 ask: Callable[[str, str], bool], log: LogFn) -> None:
        self.state, self.models, self.sessions, self.review = state, models, sessions, review
        self.ask, self.log = ask, log

    @property
    def in_force(self) -> Optional[Threshold]:
        return self.state.threshold(self.models.threshold)

    def apply(self, override: Optional[Threshold], fallback: Optional[Threshold] = None, reason: str = "") -> None:
        """Put a threshold in force (``override`` set by the inspector, else ``fallback``); with
        ``reason``, the shown run's session records it."""
        self.state.apply_threshold(override, fallback, reason if override else "set by hand")
        if reason:
            self.store(reason)

    def store(self, reason: str) -> None:
        """Record the threshold in force for the session's run shown (not for a grouped run)."""
        thr, res = self.in_force, self.state.result
        if thr is not None and res is not None and res.grouping is None:
            self.sessions.store_threshold(thr.value, reason)

    def adopt_model(self, detector: Optional[Detector], store: bool, source: str) -> None:
        """``detector`` is the model in memory now: its threshold is in force, unless the inspector
        set one and says No to replacing it."""
        hand, new = self.state.hand_threshold, detector.threshold if detector is not None else None
        how = self.state.override_reason
        keep = hand is not None and new is not None and not self.ask("Replace the hand-set threshold?", (
            f"The threshold in force, {hand.value:.6g}, was {how}. The new {detector.name} model brings its own: "
            f"{new.describe()}.\n\nYes: use the model's threshold.\nNo: keep {hand.value:.6g}."))
        if keep:
            self.log("info", f"The threshold {hand.value:.6g} ({how}) stays in force; the {detector.name} model's "
                             f"own is {new.value:.6g} (Reset threshold to use it).")
        self.state.apply_threshold(hand if keep else None, new, how if keep else "set by hand")
        if store:
            self.store(f"threshold of the model in memory ({source or 'no source'})")

    def set_by_hand(self, value: float, how: str = "set by hand") -> None:
        self.apply(Threshold.explicit(float(value)), reason=how)
        rows = self.state.rows()
        self.log("info", f"Threshold {how}: {value:.6g}; {sum(bool(r.flagged) for r in rows)} of {len(rows)} flagged")

    def reset(self) -> None:
        """Back to the model's own threshold (a restored run without a model in memory: the run's)."""
        thr = self.models.threshold
        s, rid = self.sessions.session, self.sessions.run_id
        if thr is None and rid is not None and s is not None:
            thr = s.run(rid).threshold
        self.apply(None, thr, "reset")
        self.log("info", f"Threshold reset: {thr.describe() if thr else 'no threshold'}")

    def recalibrate(self, fpr: float, busy: bool) -> bool:
        """Re-calibrate the model's threshold at the target false-positive rate ``fpr`` on the
        held-out good scores it keeps (as ``scan --model M --fpr F`` does): no retraining and no
        rescoring. Returns whether the model's threshold changed."""
        det = self.models.detector
        thr = det.threshold if det is not None else None
        if det is None or det.zero_shot or thr is None or thr.method != "calibrated" or (
                thr.fpr is not None and abs(thr.fpr - fpr) < 1e-12):
            return False
        if busy:
            self.log("warning", "Busy: the target FPR applies once the running task has ended.")
            return False
        new, why = self.models.recalibrated(fpr)
        if new is None:
            if why:
                self.log("warning", why)
            return False
        det.threshold = new
        if not self.state.model_source.startswith("re-calibrated"):
            self.state.model_source = f"re-calibrated without retraining ({self.state.model_source or 'this model'})"
        hand = self.state.threshold_override is not None
        self.log("info", f"Re-calibrated {det.name} at FPR {fpr:g}: {new.describe()}"
                         + ("; the threshold set by hand stays in force" if hand else ""))
        if not hand:
            self.apply(None, new, f"re-calibrated at FPR {fpr:g} without retraining")
        return True

    def mark_normal(self, path) -> tuple[bool, bool]:
        """"This one is normal": ``(recorded, the threshold changed)``."""
        recorded, thr = self.review.mark_normal(path)
        if thr is None:
            return recorded, False
        det = self.models.detector
        if det is not None and self.state.scored_by is det:
            det.threshold = thr
        self.state.model_source = f"re-calibrated with {_images(self.review.normal_count())} marked normal"
        self.apply(None, thr)
        return True, True

    def after_run(self, run_id: int, result: ScanResult, scored_by: Optional[Detector]) -> None:
        """A new run stored in the session: a hand-set threshold goes on with it; otherwise the
        images marked normal among it re-calibrate it, as they did the last run."""
        hand = self.state.hand_threshold
        if hand is not None:
            self.sessions.store_threshold(hand.value, self.state.override_reason)
            return
        if result.grouping is not None:
            return
        thr, n = self.review.recalibrate(run_id, result.rows)
        if thr is None:
            return
        self.state.threshold_override = None
        result.apply_threshold(thr)
        if scored_by is not None and self.models.detector is scored_by:
            scored_by.threshold = thr
        self.state.model_source = f"re-calibrated with {_images(n)} marked normal"
        self.log("info", f"Run {run_id} re-calibrated with the {_images(n)} marked normal: {thr.describe()}")
