"""Every count of a run under review, from one function.

:func:`review_counts` takes the rows of a run, the decision threshold in force, the review band
and the inspector's verdicts, and gives every number an inspector sees: how many images are
flagged, how many are in each zone of the band, how many are reviewed, left to review or
disagree with the detector, which ones (the ≠ marks) and in which order the "to review" walk
goes. The window (gallery header, histogram, review counters, ≠ marks), the HTML report and the
export all call it, so they cannot drift apart.

The rules, in one place:

* *flagged*: the score is above the threshold (``score > threshold``); in a grouped zero-shot
  run, the image is in the suspect group (its ``group`` column), whatever the threshold.
* the *review band* (low, high): at or below ``low`` passes, above ``high`` fails, between is to
  review. A threshold outside the band contradicts it (images flagged that the band passes, or
  the reverse): :attr:`ReviewCounts.band_warning` says so.
* *to review*: no verdict yet, and flagged or in the band's review zone.
* *disagree*: an OK verdict on a flagged image or an NG verdict on one that is not (``unsure``
  never disagrees).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.results import ScanRow

VERDICTS = ("ok", "ng", "unsure")
ZONES = ("pass", "review", "fail")


@dataclass(frozen=True)
class ReviewBand:
    """Two thresholds: a score at or below ``low`` passes, above ``high`` fails, between is to review."""

    low: float
    high: float

    def zone(self, score: float) -> str:
        if score <= self.low:
            return "pass"
        if score > self.high:
            return "fail"
        return "review"

    def describe(self) -> str:
        return f"pass ≤ {self.low:.4g} < review ≤ {self.high:.4g} < fail"


def disagrees(verdict: Optional[str], flagged: Optional[bool]) -> bool:
    """Whether an inspector's verdict contradicts the detector's flag (``unsure`` never does)."""
    if flagged is None or verdict not in ("ok", "ng"):
        return False
    return (verdict == "ng") != bool(flagged)


def row_flag(row: ScanRow, threshold: Optional[float]) -> Optional[bool]:
    """Whether ``row`` is flagged under ``threshold`` (None: no threshold and no group)."""
    group = row.columns.get("group")
    if group is not None:
        return group == "suspect"
    return None if threshold is None else bool(row.score > threshold)


@dataclass(frozen=True)
class ReviewCounts:
    n_images: int
    n_flagged: int
    reviewed: int  # images with a verdict
    to_review: int  # unreviewed images in the band or flagged
    disagree: int  # verdicts that contradict the flag
    verdicts: dict[str, int]  # per verdict
    threshold: Optional[float] = None
    band: Optional[ReviewBand] = None
    zones: Optional[dict[str, int]] = None  # images per zone of the band (None without a band)
    #: ``str(path)`` -> flagged, for every row (what the gallery frames and the exports write)
    flags: dict[str, Optional[bool]] = field(default_factory=dict, repr=False)
    disagreeing: frozenset[str] = frozenset()  # ``str(path)`` of the ≠ marks
    queue: tuple[Path, ...] = ()  # the "to review" walk: highest score first

    @property
    def n_flagged_text(self) -> str:
        return f"flagged: {self.n_flagged} / {self.n_images}"

    def describe(self) -> str:
        """The review counters: "reviewed 6 / 62, 1 disagree" (62 = reviewed + left to review)."""
        return f"reviewed {self.reviewed} / {self.reviewed + self.to_review}, {self.disagree} disagree"

    @property
    def band_warning(self) -> str:
        """Why the threshold contradicts the review band ("" when it does not, or there is no band)."""
        t, b = self.threshold, self.band
        if t is None or b is None or b.low <= t <= b.high:
            return ""
        if t < b.low:
            return (f"threshold {t:.4g} is below the review band ({b.low:.4g}–{b.high:.4g}): images scoring "
                    "between them are flagged although the band passes them")
        return (f"threshold {t:.4g} is above the review band ({b.low:.4g}–{b.high:.4g}): images scoring "
                "between them fail by the band but are not flagged")


def review_counts(rows: Sequence[ScanRow], threshold: Optional[float], band: Optional[ReviewBand],
                  verdicts: Mapping[Any, str]) -> ReviewCounts:
    """Every count of ``rows`` under ``threshold`` (a score; None for a grouped or unthresholded
    run), ``band`` and ``verdicts`` (path -> 'ok' | 'ng' | 'unsure'; keys are paths or their ``str``)."""
    by_path = {str(p): v for p, v in verdicts.items() if v in VERDICTS}
    per_verdict = dict.fromkeys(VERDICTS, 0)
    zones = dict.fromkeys(ZONES, 0) if band is not None else None
    flags: dict[str, Optional[bool]] = {}
    disagreeing: set[str] = set()
    todo: list[ScanRow] = []
    n_flagged = reviewed = 0
    for row in rows:
        key = str(row.path)
        flagged = row_flag(row, threshold)
        flags[key] = flagged
        n_flagged += bool(flagged)
        zone = band.zone(row.score) if band is not None else None
        if zones is not None:
            zones[zone] += 1
        v = by_path.get(key)
        if v is not None:
            reviewed += 1
            per_verdict[v] += 1
            if disagrees(v, flagged):
                disagreeing.add(key)
        elif flagged or zone == "review":
            todo.append(row)
    queue = tuple(r.path for r in sorted(todo, key=lambda r: -r.score))
    return ReviewCounts(len(rows), n_flagged, reviewed, len(todo), len(disagreeing), per_verdict, threshold, band,
                        zones, flags, frozenset(disagreeing), queue)
