"""The inspector's decisions on the open folder, as plain Python (no Qt): verdicts, notes, the
review band, "this one is normal", the "to review" walk and the ROC of the verdicts.

Every decision is committed to the session at once (through :class:`~app.session_state.SessionState`);
the controller tells the views afterwards. Tested without a window in ``tests/app/test_rooms.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from app.session_state import LogFn, SessionState
from core.grouping import GroupingError
from core.metrics.curves import threshold_for_recall, verdict_curves
from core.results import ScanResult, ScanRow, move_to_group, regroup
from core.results.review import ReviewBand, ReviewCounts, review_counts
from core.results.threshold import Threshold
from core.session import Session, SessionError


class ReviewState:
    def __init__(self, sessions: SessionState, log: LogFn) -> None:
        self.sessions = sessions
        self.log = log
        self.band: Optional[ReviewBand] = None
        self.band_detector = ""  # the detector whose scores the band was set on
        self.root: Optional[Path] = None  # the open folder: names in the log are relative to it
        self._verdicts: dict[str, str] = {}
        self._notes: dict[str, str] = {}
        self._normal: set[str] = set()  # str(path) of the images marked "this one is normal"

    # ------------------------------------------------------------------ loading
    def load(self, session: Optional[Session]) -> None:
        """The decisions kept in ``session`` (None: none)."""
        self._verdicts = {str(p): d.value for p, d in session.verdicts().items()} if session is not None else {}
        self._notes = {str(p): d.value for p, d in session.notes().items()} if session is not None else {}
        self._normal = {str(p) for p in session.good_set()} if session is not None else set()

    def clear(self) -> None:
        self.band, self.band_detector = None, ""
        self.load(None)

    # ------------------------------------------------------------------ reading
    def name(self, path: Path) -> str:
        """``path`` relative to the open folder (subfolders keep files of the same name apart)."""
        root = self.root
        return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name

    def verdict(self, path: Path) -> Optional[str]:
        return self._verdicts.get(str(path))

    def verdicts(self) -> dict[str, str]:
        """The inspector's verdicts, keyed by ``str(path)``."""
        return dict(self._verdicts)

    def note(self, path: Path) -> str:
        return self._notes.get(str(path), "")

    def normal(self) -> frozenset[str]:
        """``str(path)`` of the images marked "this one is normal" (the session's good set)."""
        return frozenset(self._normal)

    # ------------------------------------------------------------------ deciding
    def _decide(self, fn) -> bool:
        """Record one decision in the session (committed at once); False, said in the log, when it cannot be."""
        s = self.sessions.session
        if s is None:
            self.log("warning", "No session is open: this decision is not kept.")
            return False
        if s.read_only:
            self.log("warning", f"The session is read-only ({s.read_only_reason}): this decision is not recorded.")
            return False
        fn(s)
        return True

    def _on_image(self, path: Path, fn) -> bool:
        """:meth:`_decide` ``fn(session)`` about ``path``, recording the image first when no run covered it."""
        def go(s: Session) -> None:
            try:
                fn(s)
            except SessionError:  # an image the session has not seen yet (no run covered it)
                s.sync_images([path])
                fn(s)
        return self._decide(go)

    def set_verdict(self, path: Path, verdict: Optional[str]) -> bool:
        """OK / NG / unsure (``None`` clears) for ``path``; committed to the session at once."""
        path = Path(path)
        if not self._on_image(path, lambda s: s.set_verdict(path, verdict)):
            return False
        if verdict is None:
            self._verdicts.pop(str(path), None)
        else:
            self._verdicts[str(path)] = verdict
        self.log("info", f"{self.name(path)}: {verdict.upper() if verdict else 'verdict cleared'}")
        return True

    def set_note(self, path: Path, text: str) -> bool:
        path = Path(path)
        if text == self.note(path):
            return True
        if not self._on_image(path, lambda s: s.set_note(path, text)):
            return False
        self._notes[str(path)] = text
        return True

    def move_to_group(self, result: ScanResult, path: Path, group: Optional[str] = None) -> bool:
        """Move the image at ``path`` of a grouped (zero-shot) ``result`` to ``group`` ('normal' /
        'suspect'; default: the other one); the session keeps the move over any later grouping."""
        index = next((i for i, r in enumerate(result.rows) if str(r.path) == str(path)), None)
        if result.grouping is None or index is None:
            return False
        row = result.rows[index]
        if group is None:
            group = "normal" if row.columns.get("group") == "suspect" else "suspect"
        move_to_group(result, index, group)
        self._decide(lambda s: s.move_to_group(row.path, group))
        self.log("info", f"Moved {Path(path).name} to the {group} group ({result.grouping.describe()})")
        return True

    def regroup(self, result: ScanResult, method: str, seed: int) -> bool:
        """Split a grouped (zero-shot) ``result`` again with ``method``; the hand moves stay on top."""
        if result.grouping is None:
            return False
        try:
            g = regroup(result, method, seed=seed)  # milliseconds for thousands of scores
        except GroupingError as exc:
            self.log("error", f"Cannot group: {exc}")
            return False
        s, rid = self.sessions.session, self.sessions.run_id
        if s is not None and rid is not None:
            s.apply_decisions(result, rid)
        self.log("info", f"Regrouped: {g.describe()}")
        return True

    def set_band(self, low: Optional[float], high: Optional[float]) -> bool:
        """Two thresholds: at or below ``low`` passes, above ``high`` fails, between is to review
        (``None, None`` removes the band). Kept with the session's run shown."""
        if (low is None) != (high is None):
            raise ValueError("a review band needs both thresholds (or neither)")
        if low is not None and low > high:
            low, high = high, low
        run_id = self.sessions.run_id
        if run_id is None:
            self.log("warning", "Run the detector first: the review band belongs to a stored run.")
            return False
        if not self._decide(lambda s: s.set_review_band(run_id, low, high)):
            return False
        self.band = None if low is None else ReviewBand(float(low), float(high))
        self.band_detector = self.sessions.session.run(run_id).detector
        self.log("info", f"Review band: {low:.6g} .. {high:.6g}" if low is not None else "Review band removed")
        return True

    def restore_band(self, band: Optional[ReviewBand], detector: str) -> None:
        self.band, self.band_detector = band, detector if band is not None else ""

    def carry_band(self, run_id: int, detector: str) -> None:
        """A new run of the session: the band goes on with it when the same detector scored it
        (its scores are on the band's scale); another detector's run starts without one."""
        band = self.band
        if band is None:
            return
        s = self.sessions.writable
        if detector == self.band_detector and s is not None:
            s.set_review_band(run_id, band.low, band.high)
            return
        self.log("info", f"The review band {band.low:.6g} .. {band.high:.6g} was set on {self.band_detector or 'other'} "
                         f"scores: {detector}'s run starts without one.")
        self.band, self.band_detector = None, ""

    def mark_normal(self, path: Path) -> tuple[bool, Optional[Threshold]]:
        """"This one is normal": the image joins the session's good set and the run's threshold is
        re-calibrated with it (no re-scoring). Returns (recorded, the new threshold or None)."""
        path, rid = Path(path), self.sessions.run_id
        if rid is None:
            self.log("warning", "Run the detector first: 'this one is normal' re-calibrates a stored run.")
            return False, None
        if not self._on_image(path, lambda s: s.mark_normal(path)):
            return False, None
        self._normal.add(str(path))
        try:
            thr = self.sessions.session.recalibrate_with_good_set(rid)
        except SessionError as exc:
            self.log("warning", f"{path.name} added to the good set; the threshold is unchanged: {exc}")
            return True, None
        self.log("info", f"{self.name(path)} marked normal; {thr.describe()}")
        return True, thr

    def normal_count(self) -> int:
        return len(self._normal)

    def recalibrate(self, run_id: int, rows: list[ScanRow]) -> tuple[Optional[Threshold], int]:
        """Re-calibrate a new run's threshold with the images marked normal among its ``rows`` (no
        re-scoring); ``(None, 0)`` when it holds none or its threshold is not calibrated."""
        s = self.sessions.writable
        n = len(self._normal & {str(r.path) for r in rows})
        if s is None or not n:
            return None, 0
        try:
            return s.recalibrate_with_good_set(run_id), n
        except SessionError:
            return None, 0

    # ------------------------------------------------------------------ the counts and the ROC
    def counts(self, rows: list[ScanRow], threshold: Optional[float]) -> ReviewCounts:
        """Every count of ``rows`` under ``threshold`` with this band and these verdicts (the one
        function :func:`core.results.review.review_counts`, shared with the report and the export)."""
        return review_counts(rows, threshold, self.band, self._verdicts)

    def curves(self, result: Optional[ScanResult], recall: float = 0.95):
        """ROC / precision-recall of ``result`` from the inspector's OK / NG verdicts, and the
        threshold that flags ``recall`` of the NG images: ``(curves | None, suggestion | None, why)``."""
        rows = result.rows if result is not None else []
        labelled = [(1 if self._verdicts[str(r.path)] == "ng" else 0, r.score) for r in rows
                    if self._verdicts.get(str(r.path)) in ("ok", "ng")]
        if not labelled:
            return None, None, "No OK / NG verdicts on this run yet."
        labels, scores = [y for y, _ in labelled], [s for _, s in labelled]
        curves = verdict_curves(labels, scores)
        suggestion = threshold_for_recall(labels, scores, recall)
        why = "" if curves is not None else "The curves need both OK and NG verdicts."
        return curves, suggestion, why
