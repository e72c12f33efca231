"""Result types shared by the detectors, the exports and the engine.

:class:`ScoreResult` is what a detector says about one image; :class:`ScanRow` and
:class:`ScanResult` are a scanned batch as the CLI, the GUI and the exports see it. They sit
below ``core.detectors``, ``core.io`` and ``core.engine`` so that every one of those can use
them without importing the others (the layers contract in ``pyproject.toml``).

A zero-shot scan has no threshold: its batch is split by its scores into a normal and a
suspect group (:mod:`core.grouping`); :func:`regroup` and :func:`move_to_group` change the
groups later (the GUI's edits), and exports follow them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from core.data.images import Skipped
from core.grouping import DEFAULT_METHOD, GROUP_NAMES, SUSPECT, Grouping, GroupingError, group_scores
from core.results.threshold import Threshold

#: Anomaly maps kept in a scan result are stored at most this many pixels on the long side
#: (float16), so that a scan of thousands of images stays within memory; exports upsample
#: them back to the image size.
MAP_STORE_SIZE = 384


@dataclass
class ScoreResult:
    """What a detector says about one image.

    ``anomaly_map`` is ``float32 (H, W)`` at the input image's resolution (``None`` for
    methods without localisation). ``extras`` holds named images an inspector may want beside
    the input (a reconstruction, a restored image, partial maps); ``columns`` holds
    detector-specific values for the results table.
    """

    score: float
    anomaly_map: Optional[np.ndarray] = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, int] = (0, 0)  # (H, W) of the input; set by Detector.score


@dataclass
class ScanRow:
    path: Path
    score: float
    flagged: Optional[bool]
    image_shape: tuple[int, int]
    anomaly_map: Optional[np.ndarray] = None  # float16, at most MAP_STORE_SIZE a side
    columns: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


@dataclass
class ScanResult:
    detector: str
    rows: list[ScanRow]
    skipped: list[Skipped]
    threshold: Optional[Threshold]
    seconds: float = 0.0
    #: The split of a zero-shot scan into normal / suspect (``labels`` follow ``rows``).
    grouping: Optional[Grouping] = None
    #: Why a zero-shot scan could not be grouped (e.g. a batch of one image), else "".
    grouping_note: str = ""
    #: The scan was cancelled part-way: ``rows`` hold only the images scored before that.
    interrupted: bool = False

    @property
    def flagged(self) -> list[ScanRow]:
        return [r for r in self.rows if r.flagged]

    def apply_threshold(self, threshold: Optional[Threshold]) -> None:
        """Flag by ``threshold``; a grouped (zero-shot) result keeps flagging its suspect group."""
        self.threshold = threshold
        if self.grouping is not None:
            apply_grouping(self, self.grouping)
            return
        for r in self.rows:
            r.flagged = None if threshold is None else threshold.flags(r.score)


def score_error(score: float) -> str:
    """The skip reason of an image whose score is NaN or infinite: an error for that image,
    never "not flagged" (every scan path, plain, streamed or into a session, says the same)."""
    return f"score is not a number ({score}): the model or this image is broken"


def compact_map(m: np.ndarray, limit: int = MAP_STORE_SIZE) -> np.ndarray:
    import cv2

    h, w = m.shape
    scale = min(1.0, limit / max(h, w))
    if scale < 1.0:
        m = cv2.resize(m.astype(np.float32), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return m.astype(np.float16)


def make_row(path: Path, result: ScoreResult, image_shape: tuple[int, int], threshold: Optional[Threshold],
             keep_extras: bool = False) -> ScanRow:
    return ScanRow(
        path=path,
        score=float(result.score),
        flagged=None if threshold is None else threshold.flags(result.score),
        image_shape=image_shape,
        anomaly_map=None if result.anomaly_map is None else compact_map(result.anomaly_map),
        columns=dict(result.columns),
        extras={k: compact_map(v) if v.ndim == 2 else v for k, v in result.extras.items()} if keep_extras else {},
    )


# ----------------------------------------------------------------------------- grouping
def apply_grouping(result: ScanResult, grouping: Grouping) -> None:
    """Write ``grouping`` into the rows: ``group`` column, ``flagged`` = in the suspect group."""
    if len(grouping.labels) != len(result.rows):
        raise ValueError(f"grouping of {len(grouping.labels)} images does not fit a scan of {len(result.rows)}")
    result.grouping = grouping
    for row, label in zip(result.rows, grouping.labels):
        row.columns["group"] = GROUP_NAMES[int(label)]
        row.flagged = bool(label == SUSPECT)


def regroup(result: ScanResult, method: str = DEFAULT_METHOD, seed: int = 0) -> Grouping:
    """Split the scan's rows into normal / suspect by their scores with ``method``
    (``ncut``, ``kmeans`` or ``gmm``); replaces any earlier grouping, hand moves included."""
    grouping = group_scores([r.score for r in result.rows], method, seed=seed)
    result.grouping_note = ""
    apply_grouping(result, grouping)
    return grouping


def move_to_group(result: ScanResult, index: int, group: str) -> Grouping:
    """Move row ``index`` to ``group`` ('normal' or 'suspect') by hand; the cut value stays
    that of the algorithm's split, the move is recorded in ``grouping.moved``."""
    if result.grouping is None:
        raise GroupingError("this scan has no groups to edit (only zero-shot scans are grouped)")
    if group not in GROUP_NAMES:
        raise ValueError(f"group must be one of {', '.join(GROUP_NAMES)}, not {group!r}")
    if not 0 <= index < len(result.rows):
        raise IndexError(f"no row {index} in a scan of {len(result.rows)} images")
    g = result.grouping
    label = GROUP_NAMES.index(group)
    if int(g.labels[index]) != label:
        g.labels = g.labels.copy()
        g.labels[index] = label
        if index in g.moved:
            g.moved.remove(index)  # moved back where the algorithm put it
        else:
            g.moved.append(index)
    apply_grouping(result, g)
    return g
