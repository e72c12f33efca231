"""What the CLI and the GUI both do: train a detector with a calibrated threshold, and scan
a folder. Plain Python; progress callbacks and cancel tokens pass straight through.

A zero-shot detector has no threshold: after its scan the batch is split by its scores into a
normal and a suspect group (:mod:`core.grouping`; method from the detector's ``group``
setting, normalized cut by default). Each row gets a ``group`` column and ``flagged`` means
"in the suspect group"; :func:`regroup` and :func:`move_to_group` change the groups later
(the GUI's edits), and exports follow them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from core.data.images import ImageSource, Skipped
from core.detectors.base import Detector, FitError
from core.engine.selfcheck import run_self_check
from core.grouping import DEFAULT_METHOD, GroupingError
from core.results import ScanResult, ScanRow, ScoreResult, make_row, regroup, score_error
from core.results.self_check import SelfCheck
from core.results.threshold import DEFAULT_FPR, Threshold, calibrate, split_calibration
from core.runtime.cancel import Cancelled, CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress


@dataclass
class TrainReport:
    n_train: int
    n_calibration: int
    threshold: Optional[Threshold]
    skipped: list[Skipped]
    fit_seconds: float
    self_check: Optional[SelfCheck] = None
    #: ``auto``: each candidate's settings and self-check, in the order tried (the chosen one marked)
    candidates: Optional[list[dict]] = None


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
                  cancel: CancelToken | None, skipped: list[Skipped] | None = None,
                  estimator: str = "empirical") -> tuple[Threshold, list[float]]:
    """Score held-out good ``images`` and calibrate at ``fpr``; returns (threshold, their scores)."""
    results = detector.score(images, progress, cancel, skipped=skipped)
    if len(results) < 3:
        raise FitError(f"only {len(results)} held-out good images could be read; 3 are needed to calibrate the threshold")
    scores = [r.score for r in results.values()]
    try:
        return calibrate(scores, fpr, estimator), scores
    except ValueError as exc:  # no finite score among them
        raise FitError(f"cannot calibrate the threshold: {exc}") from None


def recalibrate(
    detector: Detector,
    good: ImageSource,
    *,
    max_train: int | None = None,
    fpr: float | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> Threshold:
    """Re-calibrate a trained detector's threshold under its current settings (and runtime), on
    the same held-out images :func:`train_detector` chose (same ``good``, ``max_train`` and seed),
    or, for a cross-calibrated threshold, on out-of-fold scores made again from the same images.

    For a trained model whose score settings changed (see
    :meth:`~core.detectors.base.Detector.threshold_mismatch`). ``fpr`` defaults to the one
    the threshold was calibrated at.
    """
    old = detector.threshold
    rate = fpr if fpr is not None else (old.fpr if old is not None and old.fpr is not None else DEFAULT_FPR)
    estimator = old.estimator if old is not None else "empirical"
    if old is not None and old.scheme.startswith("kfold-"):
        # cross-calibrated: every good image was trained on, none is held out; the out-of-fold
        # scores are made again under the current settings (the model itself is kept)
        chosen = good.subset(select_subset(len(good), max_train, detector.config.seed))
        oof = cross_calibration_scores(detector, chosen, int(old.scheme.split("-", 1)[1]), progress, cancel)
        try:
            thr = calibrate(oof, rate, estimator, scheme=old.scheme)
        except ValueError as exc:
            raise FitError(str(exc)) from None
    else:
        _, cal = calibration_images(good, max_train, detector.config.seed)
        thr, _ = _calibrate_on(detector, cal, rate, progress, cancel, None, estimator)
    thr.settings = detector.config.to_dict()
    detector.threshold = thr
    detector.meta["calibrated_with"] = detector.runtime
    return thr


def calibrated_elsewhere(detector: Detector) -> bool:
    """Whether ``detector``'s threshold was calibrated on scores it would not give now: it has
    calibration scores and its networks run at a precision other than float32 (a bf16 or int8
    runtime). :func:`recalibrate` on the same good images then makes them again (held-out or
    out-of-fold)."""
    thr = detector.threshold
    return thr is not None and bool(thr.calibration_scores) and not detector.runtime.endswith("float32")


def cross_calibration_scores(detector: Detector, images: ImageSource, folds: int,
                             progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                             on_fold: Callable[[int, Detector, ImageSource, list[float]], None] | None = None,
                             for_fit: bool = False) -> list[float]:
    """Out-of-fold scores of every image: ``folds`` fresh copies of ``detector`` (same class and
    settings), each trained on the other folds and scoring its own fold, so each score comes
    from a model that never saw that image. Costs ``folds`` trainings: for cheap detectors.
    ``on_fold(j, model, held images, their scores)`` runs after each fold (the self-check);
    ``for_fit``: ``detector.fit(images)`` follows, and may reuse what the folds prepared."""
    n = len(images)
    k = min(folds, n)
    if k < 2:
        raise FitError(f"cross-calibration needs at least 2 good images, not {n}")
    groups = np.array_split(np.random.default_rng(detector.config.seed).permutation(n), k)
    helds = [sorted(int(i) for i in group) for group in groups]
    rests = [sorted(set(range(n)) - set(held)) for held in helds]
    # a detector may train its fold models faster than K trainings (patchcore: one extraction)
    trainer = detector.fold_trainer(images, SubProgress(progress, 0.0, 0.4), cancel, for_fit)
    scores: list[float] = []
    for j, (held, rest) in enumerate(zip(helds, rests)):
        if trainer is not None:
            a, b = 0.4 + 0.6 * j / k, 0.4 + 0.6 * (j + 1) / k
            clone = trainer(rest, SubProgress(progress, a, (a + b) / 2, f"fold {j + 1} of {k}"))
            span = ((a + b) / 2, b)
        else:
            clone = type(detector)(copy.deepcopy(detector.config), device=detector.device)
            clone.fit(images.subset(rest), SubProgress(progress, j / k, (j + 0.8) / k, f"fold {j + 1} of {k}"), cancel)
            span = ((j + 0.8) / k, (j + 1) / k)
        check(cancel)
        res = clone.score(images.subset(held), SubProgress(progress, *span, "scoring"), cancel)
        fold_scores = [r.score for r in res.values()]
        scores += fold_scores
        if on_fold is not None:
            on_fold(j, clone, images.subset(held), fold_scores)
    return scores


def auto_calibration(n_good: int, fpr: float, calibration: str = "auto", estimator: str = "auto") -> tuple[str, str]:
    """Resolve ``auto`` calibration for ``n_good`` good images at target ``fpr``: cross-calibrate
    (``kfold``) when the held-out images would be fewer than 1 / fpr (they cannot support the
    rate), and read a fitted ``tail`` when the calibration scores are fewer than 1 / fpr (the
    empirical quantile then is just their maximum). Measured with ``benchmarks/calibration_fpr.py``
    (docs/reliability.md). Values other than ``auto`` pass through."""
    need = math.ceil(1.0 / fpr) if fpr > 0 else math.inf
    try:
        n_hold = len(split_calibration(n_good)[1])
    except ValueError:  # too few to hold any out: train_detector says so
        n_hold = 0
    if calibration == "auto":
        calibration = "kfold" if n_hold < need and n_good >= 2 else "holdout"
    if estimator == "auto":
        estimator = "tail" if (n_good if calibration == "kfold" else n_hold) < need else "empirical"
    return calibration, estimator


def train_detector(
    detector: Detector,
    good: ImageSource,
    *,
    fpr: float = DEFAULT_FPR,
    threshold: float | None = None,
    max_train: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    calibration: str | None = None,
    folds: int = 5,
    estimator: str | None = None,
    self_check: bool | None = None,
    auto: bool = False,
) -> TrainReport:
    """Fit ``detector`` on good images and set its decision threshold.

    Without an explicit ``threshold`` 10 % of the good images (at least 3) are held out and
    the threshold is calibrated on their scores at the target false-positive rate ``fpr``.
    With ``calibration="kfold"`` nothing is held out: the threshold is calibrated on the
    out-of-fold scores of all good images (:func:`cross_calibration_scores`, ``folds`` extra
    trainings) and the model is then trained on all of them. ``estimator="tail"`` reads the
    threshold from a fitted tail (:func:`core.results.threshold.calibrate`). ``calibration`` and
    ``estimator`` left at None take the detector's defaults (``Detector.default_calibration``);
    ``auto`` chooses by the number of good images (:func:`auto_calibration`).

    ``self_check`` (None: the detector's ``self_check_default``) scores synthetic defects pasted
    into held-out good images after training (:mod:`core.engine.selfcheck`) and records the
    result in ``detector.meta["self_check"]``; with k-fold calibration the first fold's model and
    images are used. ``auto`` first fits each of the detector's :meth:`auto_candidates` on the
    fit images, self-checks each on the held-out ones and keeps the settings with the best
    self-check (no defect label is used); the report lists every candidate.

    The detector is only changed when everything succeeded; a cancelled or failed training
    raises and leaves no half-trained state visible to the caller's saved models.
    """
    cal_default, est_default = detector.default_calibration()
    calibration = calibration or cal_default
    estimator = estimator or est_default
    if calibration not in ("holdout", "kfold", "auto"):
        raise ValueError(f"calibration must be 'holdout', 'kfold' or 'auto', not {calibration!r}")
    if len(good) == 0:
        raise FitError("no good images to train on (the folder holds no image files)")
    seed = detector.config.seed
    calibration, estimator = auto_calibration(len(select_subset(len(good), max_train, seed)), fpr, calibration,
                                              estimator)
    skipped: list[Skipped] = []
    t0 = time.perf_counter()
    if detector.zero_shot:
        return TrainReport(0, 0, None, [], 0.0)
    checking = detector.self_check_default if self_check is None else bool(self_check)
    candidates = None
    if auto:
        candidates = _choose_settings(detector, good, max_train, fpr, SubProgress(progress, 0.0, 0.5, "auto"), cancel)
        progress = SubProgress(progress, 0.5, 1.0, "training")
    check_result: SelfCheck | None = None
    if threshold is not None:
        chosen = good.subset(select_subset(len(good), max_train, seed))
        thr = Threshold.explicit(threshold)
        detector.fit(chosen, SubProgress(progress, 0.0, 1.0, "training"), cancel, skipped)
        n_train, n_cal = len(chosen) - len(skipped), 0
    elif calibration == "kfold":
        chosen = good.subset(select_subset(len(good), max_train, seed))
        checks: list[SelfCheck] = []

        def first_fold_check(j: int, model: Detector, held: ImageSource, held_scores: list[float]) -> None:
            if checking and j == 0:
                checks.append(run_self_check(model, held, held_scores, seed, None, cancel))

        oof = cross_calibration_scores(detector, chosen, folds, SubProgress(progress, 0.0, 0.8, "cross-calibrating"),
                                       cancel, first_fold_check, for_fit=True)
        if len(oof) < 3:
            raise FitError(f"only {len(oof)} good images could be scored; 3 are needed to calibrate the threshold")
        try:
            thr = calibrate(oof, fpr, estimator, scheme=f"kfold-{min(folds, len(chosen))}")
        except ValueError as exc:
            raise FitError(str(exc)) from None
        detector.fit(chosen, SubProgress(progress, 0.8, 1.0, "training"), cancel, skipped)
        n_train, n_cal = len(chosen) - len(skipped), thr.n_calibration
        check_result = checks[0] if checks else None
    else:
        fit_images, cal_images = calibration_images(good, max_train, seed)
        detector.fit(fit_images, SubProgress(progress, 0.0, 0.85, "training"), cancel, skipped)
        check(cancel)
        cal_skipped: list[Skipped] = []
        thr, cal_scores = _calibrate_on(detector, cal_images, fpr, SubProgress(progress, 0.85, 0.9, "calibrating"),
                                        cancel, cal_skipped, estimator)
        n_cal = len(cal_scores)
        if checking:
            check_result = run_self_check(detector, cal_images, cal_scores, seed,
                                          SubProgress(progress, 0.9, 1.0, "self-check"), cancel)
        n_train = len(fit_images) - len(skipped)
        skipped += cal_skipped
    thr.settings = detector.config.to_dict()
    detector.threshold = thr
    detector.meta["n_train"] = int(n_train)
    # what computed the calibration scores (a scan at another precision says so)
    detector.meta["calibrated_with"] = detector.runtime
    if check_result is not None:
        detector.meta["self_check"] = check_result.to_dict()
    if candidates is not None:
        detector.meta["auto"] = candidates
    return TrainReport(n_train, n_cal, thr, skipped, time.perf_counter() - t0, check_result, candidates)


def _choose_settings(detector: Detector, good: ImageSource, max_train: int | None, fpr: float,
                     progress: ProgressFn | None, cancel: CancelToken | None) -> list[dict]:
    """``auto``: fit each candidate of ``detector.auto_candidates()`` on the fit images, self-check
    it on the held-out ones, and set ``detector.config`` to the best (the first among equals, so
    the detector's own settings win a tie). Returns one record per candidate."""
    fit_images, cal_images = calibration_images(good, max_train, detector.config.seed)
    options = detector.auto_candidates(fit_images)
    if not options:
        raise FitError(f"{detector.name} has no settings for auto to choose from")
    records, best, best_key = [], None, None
    for j, overrides in enumerate(options):
        lo, hi = j / len(options), (j + 1) / len(options)
        trial = type(detector)(detector.config.with_overrides(overrides), device=detector.device)
        trial.fit(fit_images, SubProgress(progress, lo, lo + 0.7 * (hi - lo), f"candidate {j + 1} of {len(options)}"),
                  cancel)
        _, scores = _calibrate_on(trial, cal_images, fpr, None, cancel)
        result = run_self_check(trial, cal_images, scores, detector.config.seed,
                                SubProgress(progress, lo + 0.7 * (hi - lo), hi, "self-check"), cancel)
        records.append({"settings": dict(overrides), "self_check": result.to_dict(), "chosen": False})
        if best_key is None or result.selection_key > best_key:
            best, best_key = j, result.selection_key
    records[best]["chosen"] = True
    detector.config = detector.config.with_overrides(options[best])
    return records


def scan_images(
    detector: Detector,
    source: ImageSource,
    *,
    threshold: Optional[Threshold] = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    on_row: Callable[[int, ScanRow], None] | None = None,
    keep_extras: bool = False,
    keep_partial: bool = False,
) -> ScanResult:
    """Score every image of ``source``; unreadable files end up in ``skipped``.

    ``threshold`` overrides the detector's own. ``on_row(index, row)`` fires per image, in
    the worker's thread, as results come in. With ``keep_partial`` a cancelled scan returns
    the rows scored so far, with ``interrupted`` set, instead of raising ``Cancelled``.
    """
    thr = threshold if threshold is not None else detector.threshold
    rows: dict[int, ScanRow] = {}
    skipped: list[Skipped] = []
    t0 = time.perf_counter()

    def collect(i: int, res: ScoreResult) -> None:
        if not math.isfinite(res.score):  # never "not flagged": an error for this image
            skipped.append(Skipped(source.path(i) or Path(source.name(i)), score_error(res.score)))
            return
        row = make_row(source.path(i) or Path(source.name(i)), res, res.image_shape, thr, keep_extras)
        rows[i] = row
        if on_row:
            on_row(i, row)

    interrupted = False
    try:
        detector.score(source, progress, cancel, on_result=collect, skipped=skipped)
    except Cancelled:
        if not keep_partial:
            raise
        interrupted = True
    ordered = [rows[i] for i in sorted(rows)]
    result = ScanResult(detector.name, ordered, skipped, thr, time.perf_counter() - t0, interrupted=interrupted)
    if detector.zero_shot:
        method = getattr(detector.config, "group", DEFAULT_METHOD)
        try:
            regroup(result, method, seed=detector.config.seed)
        except GroupingError as exc:
            result.grouping_note = str(exc)
        result.seconds = time.perf_counter() - t0
    return result
