"""What the CLI and the GUI both do: train a detector with a calibrated threshold, and scan
a folder. Plain Python; progress callbacks and cancel tokens pass straight through.

A zero-shot detector has no threshold: after its scan the batch is split by its scores into a
normal and a suspect group (:mod:`core.grouping`; method from the detector's ``group``
setting, normalized cut by default). Each row gets a ``group`` column and ``flagged`` means
"in the suspect group"; :func:`regroup` and :func:`move_to_group` change the groups later
(the GUI's edits), and exports follow them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from core.data.images import ImageSource, Skipped
from core.detectors.base import Detector, FitError, ScoreResult
from core.detectors.threshold import DEFAULT_FPR, Threshold, calibrate, split_calibration
from core.engine.cancel import CancelToken, check
from core.engine.progress import ProgressFn, SubProgress
from core.grouping import GROUP_NAMES, SUSPECT, Grouping, GroupingError, group_scores

#: Anomaly maps kept in a scan result are stored at most this many pixels on the long side
#: (float16), so that a scan of thousands of images stays within memory; exports upsample
#: them back to the image size.
MAP_STORE_SIZE = 384


@dataclass
class TrainReport:
    n_train: int
    n_calibration: int
    threshold: Optional[Threshold]
    skipped: list[Skipped]
    fit_seconds: float


def select_subset(n: int, max_n: int | None, seed: int) -> list[int]:
    """Seeded choice of at most ``max_n`` of ``n`` indices, kept in order."""
    if max_n is None or max_n >= n:
        return list(range(n))
    if max_n < 1:
        raise ValueError("max-train must be at least 1")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def calibration_images(good: ImageSource, max_train: int | None, seed: int) -> tuple[ImageSource, ImageSource]:
    """The (fit, held-out calibration) images :func:`train_detector` uses for ``seed``."""
    chosen = good.subset(select_subset(len(good), max_train, seed))
    try:
        train_idx, cal_idx = split_calibration(len(chosen), seed=seed)
    except ValueError as exc:
        raise FitError(str(exc)) from None
    return chosen.subset(train_idx), chosen.subset(cal_idx)


def _calibrate_on(detector: Detector, images: ImageSource, fpr: float, progress: ProgressFn | None,
                  cancel: CancelToken | None, skipped: list[Skipped] | None = None) -> tuple[Threshold, int]:
    """Score held-out good ``images`` and calibrate at ``fpr``; returns (threshold, images scored)."""
    results = detector.score(images, progress, cancel, skipped=skipped)
    if len(results) < 3:
        raise FitError(f"only {len(results)} held-out good images could be read; 3 are needed to calibrate the threshold")
    return calibrate([r.score for r in results.values()], fpr), len(results)


def recalibrate(
    detector: Detector,
    good: ImageSource,
    *,
    max_train: int | None = None,
    fpr: float | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> Threshold:
    """Re-calibrate a trained detector's threshold under its current settings, on the same
    held-out images :func:`train_detector` chose (same ``good``, ``max_train`` and seed).

    For a trained model whose score settings changed (see
    :meth:`~core.detectors.base.Detector.threshold_mismatch`). ``fpr`` defaults to the one
    the threshold was calibrated at.
    """
    old = detector.threshold
    rate = fpr if fpr is not None else (old.fpr if old is not None and old.fpr is not None else DEFAULT_FPR)
    _, cal = calibration_images(good, max_train, detector.config.seed)
    thr, _ = _calibrate_on(detector, cal, rate, progress, cancel)
    thr.settings = detector.config.to_dict()
    detector.threshold = thr
    return thr


def train_detector(
    detector: Detector,
    good: ImageSource,
    *,
    fpr: float = DEFAULT_FPR,
    threshold: float | None = None,
    max_train: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> TrainReport:
    """Fit ``detector`` on good images and set its decision threshold.

    Without an explicit ``threshold`` 10 % of the good images (at least 3) are held out and
    the threshold is calibrated on their scores at the target false-positive rate ``fpr``.
    The detector is only changed when everything succeeded; a cancelled or failed training
    raises and leaves no half-trained state visible to the caller's saved models.
    """
    if len(good) == 0:
        raise FitError("no good images to train on (the folder holds no image files)")
    seed = detector.config.seed
    skipped: list[Skipped] = []
    t0 = time.perf_counter()
    if detector.zero_shot:
        return TrainReport(0, 0, None, [], 0.0)
    if threshold is not None:
        chosen = good.subset(select_subset(len(good), max_train, seed))
        thr = Threshold.explicit(threshold)
        detector.fit(chosen, SubProgress(progress, 0.0, 1.0, "training"), cancel, skipped)
        n_train, n_cal = len(chosen) - len(skipped), 0
    else:
        fit_images, cal_images = calibration_images(good, max_train, seed)
        detector.fit(fit_images, SubProgress(progress, 0.0, 0.9, "training"), cancel, skipped)
        check(cancel)
        cal_skipped: list[Skipped] = []
        thr, n_cal = _calibrate_on(detector, cal_images, fpr, SubProgress(progress, 0.9, 1.0, "calibrating"), cancel,
                                   cal_skipped)
        n_train = len(fit_images) - len(skipped)
        skipped += cal_skipped
    thr.settings = detector.config.to_dict()
    detector.threshold = thr
    detector.meta["n_train"] = int(n_train)
    return TrainReport(n_train, n_cal, thr, skipped, time.perf_counter() - t0)


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


def scan_images(
    detector: Detector,
    source: ImageSource,
    *,
    threshold: Optional[Threshold] = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    on_row: Callable[[int, ScanRow], None] | None = None,
    keep_extras: bool = False,
) -> ScanResult:
    """Score every image of ``source``; unreadable files end up in ``skipped``.

    ``threshold`` overrides the detector's own. ``on_row(index, row)`` fires per image, in
    the worker's thread, as results come in.
    """
    thr = threshold if threshold is not None else detector.threshold
    rows: dict[int, ScanRow] = {}
    skipped: list[Skipped] = []
    t0 = time.perf_counter()

    def collect(i: int, res: ScoreResult) -> None:
        row = make_row(source.path(i) or Path(source.name(i)), res, res.image_shape, thr, keep_extras)
        rows[i] = row
        if on_row:
            on_row(i, row)

    detector.score(source, progress, cancel, on_result=collect, skipped=skipped)
    ordered = [rows[i] for i in sorted(rows)]
    result = ScanResult(detector.name, ordered, skipped, thr, time.perf_counter() - t0)
    if detector.zero_shot:
        method = getattr(detector.config, "group", "ncut")
        try:
            regroup(result, method, seed=detector.config.seed)
        except GroupingError as exc:
            result.grouping_note = str(exc)
        result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- grouping
def apply_grouping(result: ScanResult, grouping: Grouping) -> None:
    """Write ``grouping`` into the rows: ``group`` column, ``flagged`` = in the suspect group."""
    if len(grouping.labels) != len(result.rows):
        raise ValueError(f"grouping of {len(grouping.labels)} images does not fit a scan of {len(result.rows)}")
    result.grouping = grouping
    for row, label in zip(result.rows, grouping.labels):
        row.columns["group"] = GROUP_NAMES[int(label)]
        row.flagged = bool(label == SUSPECT)


def regroup(result: ScanResult, method: str = "ncut", seed: int = 0) -> Grouping:
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
