"""The evaluation harness: train a detector on a dataset's training split, score its test split,
and report the metrics and the time and memory it took.

:func:`run_bench` returns a plain dict (the JSON that ``anomaly-inspector bench --json``
writes)::

    {"detector", "dataset", "category", "device", "config": {...}, "n_train", "n_test", "batch",
     "metrics": {"image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall"},
     "groupings": {"ncut" | "kmeans" | "gmm": {"normal", "suspect", "accuracy", "recall", "error"}} | None,
     "timing": {"fit_seconds", "score_seconds", "score_images_per_second", "score_cpu_seconds",
                "decode_workers", "peak_rss_mb", "peak_gpu_mb", "score_runs"},
     "training": {"epochs_done", "steps", "stopped_by"} (those the model recorded) | None,
     "self_check": {"auroc", "by_size", "by_kind", "smallest_separated", "n_good", "n_synthetic"} | None,
     "auto": [{"settings", "self_check", "chosen"}, ...] | None,
     "runtime": {"runtime", "precision", "threads", "convert_seconds", "search", "lanes"},
     "machine": {"cpu", "logical_cpus", "torch_threads", "cpu_capability", "bf16_instructions",
                 "gpu", "torch"},
     "version"}

``groupings`` (zero-shot detectors only, else ``None``): the same scores split by each grouping
method (the zero-shot paper's Table 2 compares normalized cut, k-means and GMM on one set of
noise errors): group sizes and the accuracy and recall of the suspect group, or ``error`` where
the method could not split the batch. ``metrics.accuracy`` / ``recall`` are those of the
detector's own ``group`` setting, as a scan would group the batch.

``batch`` is what was scored: ``"test"`` (the test split) or, for a zero-shot detector asked for
it, ``"train+test"`` (see ``zero_shot_batch``). A value that does not apply (pixel metrics of a detector without maps, GPU memory on the
CPU, fit time of a zero-shot detector) is ``None``.

Timing is what a user waits for: ``fit_seconds`` is the whole of :func:`train_detector`
(decoding, fitting, calibrating the threshold); ``score_seconds`` is a whole
:func:`scan_images` of the test split (decoding, scoring, keeping the maps), measured after
one untimed warm-up batch, with the images decoded ahead by ``decode_workers`` threads as
``scan`` decodes them (before issue 28 they were decoded one after the other, in the scoring
thread). ``score_cpu_seconds`` is the CPU time the process used meanwhile (every thread): on a
machine shared with other work it is the figure that does not depend on the load. With
``score_runs`` > 1 the test split is scanned that many times (the metrics come from the first
scan; the model does not change between them), the three figures are those of the median scan
by images/s, and ``score_runs`` lists every scan's images/s: a test split of a few seconds (83
bottle images) spreads by a tenth from run to run on a shared VM, and the median of five does not
rest on one draw. ``score_runs`` is ``[images/s]`` for one scan. On a GPU the
device is synchronised before each clock reading.
``peak_rss_mb`` is the peak resident memory of the *process* so far (``getrusage``), so it
includes whatever ran before in the same process; ``peak_gpu_mb`` is the peak memory torch
allocated on the device during this run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from core.data.images import ImageReadError, ImageSource, Skipped
from core.data.layouts import Dataset, DatasetError, Sample, detect_layout, load_dataset, read_mask
from core.detectors.base import Detector
from core.detectors.config import ConfigError
from core.detectors.exporting import apply_runtime, resolve_runtime
from core.detectors.registry import create_detector, detector_names, get_detector_class, load_model
from core.detectors.training import epoch_label, minutes_label
from core.engine.stream_scan import default_workers, prefetch
from core.engine.workflows import (
    calibrated_elsewhere,
    calibration_images,
    recalibrate,
    scan_images,
    train_detector,
)
from core.io.checkpoint import CheckpointError, check_save_target
from core.metrics import compute_all
from core.results import ScanRow
from core.runtime.cancel import CancelToken, check
from core.runtime.device import machine_info
from core.runtime.progress import ProgressFn, SubProgress

#: Resolution (a side) at which the pixel metrics compare maps and masks.
EVAL_SIZE = 256

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall")
TIMING_KEYS = ("fit_seconds", "score_seconds", "score_images_per_second", "score_cpu_seconds", "decode_workers",
               "peak_rss_mb", "peak_gpu_mb", "score_runs")
RESULT_KEYS = ("detector", "dataset", "category", "device", "config", "n_train", "n_test", "batch", "metrics",
               "groupings", "timing", "training", "self_check", "auto", "runtime", "machine", "version")
#: What a trained model's ``meta`` says about its training, copied into the result's ``training``.
TRAINING_KEYS = ("epochs_done", "steps", "stopped_by")
#: Per-image columns handed to ``run_bench(per_image=...)`` (``bench --scores``).
PER_IMAGE_KEYS = ("path", "label", "score", "group")
#: What a zero-shot detector may be given to score (``run_bench(zero_shot_batch=...)``).
BATCH_CHOICES = ("test", "all")

_FLOAT16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------- helpers
def package_version() -> str:
    """The installed package version, plus ``+g<commit>`` (and ``.dirty``) inside a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("anomaly-inspector")
    except PackageNotFoundError:
        v = "0+unknown"
    commit = _git_commit(Path(__file__).resolve().parents[2])
    if commit:
        v += ("." if "+" in v else "+") + commit
    return v


def _git_commit(repo: Path) -> str | None:
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    tag = "g" + head.stdout.strip()
    return tag + (".dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``None`` where unsupported)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return float(peak) / (1024.0 * 1024.0) if sys.platform == "darwin" else float(peak) / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mvtec_categories(root: Path) -> list[str]:
    """Category names under an MVTec AD root; empty when ``root`` is itself a category."""
    if not root.is_dir() or ((root / "train").is_dir() and (root / "test").is_dir()):
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "train").is_dir() and (p / "test").is_dir())


def _good_images_used(n_fit: int, threshold) -> int:
    """The good images a training used: those fitted plus those held out to calibrate (none held
    out under kfold cross-calibration, whose calibration scores come from the fitted images)."""
    if threshold is None or threshold.scheme.startswith("kfold"):
        return n_fit
    return n_fit + threshold.n_calibration


def load_bench_dataset(root: str | os.PathLike, layout: str = "auto", category: str | None = None,
                       seed: int = 0) -> Dataset:
    """:func:`load_dataset`, except that an MVTec AD root holding exactly one category needs
    no ``category``."""
    path = Path(root).expanduser()
    resolved = detect_layout(path) if layout == "auto" else layout
    if resolved == "mvtec" and category is None:
        cats = _mvtec_categories(path)
        if len(cats) == 1:
            category = cats[0]
    return load_dataset(path, resolved, category, seed=seed)


def stratified_subset(samples: Sequence[Sample], max_n: int | None, seed: int) -> list[int]:
    """Seeded choice of at most ``max_n`` test samples, in order, keeping the proportions of
    each (label, defect type); both labels stay represented whenever ``max_n >= 2``."""
    n = len(samples)
    if max_n is None or max_n >= n:
        return list(range(n))
    if max_n < 1:
        raise ValueError("max-test must be at least 1")
    strata: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        strata[(s.label, s.defect_type)].append(i)
    keys = sorted(strata)
    quota = {k: max_n * len(strata[k]) / n for k in keys}
    alloc = {k: int(math.floor(quota[k])) for k in keys}
    # Largest remainder first; ties go to the larger stratum, then the sorted key order.
    for k in sorted(keys, key=lambda k: (-(quota[k] - alloc[k]), -len(strata[k]), k))[: max_n - sum(alloc.values())]:
        alloc[k] += 1
    labels = {k[0] for k in keys}
    if max_n >= 2 and len(labels) == 2:
        for missing in (0, 1):
            if sum(v for k, v in alloc.items() if k[0] == missing) == 0:
                donor = max((k for k in keys if k[0] != missing), key=lambda k: alloc[k])
                taker = max((k for k in keys if k[0] == missing), key=lambda k: len(strata[k]))
                alloc[donor] -= 1
                alloc[taker] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in keys:
        if alloc[k]:
            chosen += [int(i) for i in rng.choice(strata[k], size=alloc[k], replace=False)]
    return sorted(chosen)


def snapshot_labels(minutes: Sequence[float] = (), epochs: Sequence[int] = ()) -> list[str]:
    """The labels of learning-curve snapshots, as :class:`~core.detectors.training.TrainingLoop` names them."""
    return [minutes_label(m) for m in minutes] + [epoch_label(e) for e in epochs]


def snapshot_folder(save_model: str | os.PathLike, label: str) -> Path:
    """Where ``run_bench`` saves the snapshot ``label`` of a model saved to ``save_model``."""
    p = Path(save_model)
    return p.with_name(f"{p.name}-{label}")


def _load_bench_model(model_dir: str | os.PathLike, detector_name: str, overrides: dict[str, Any],
                      device: str | torch.device) -> Detector:
    detector = load_model(model_dir, device=device)
    if detector.name != detector_name:
        raise CheckpointError(f"{model_dir} holds a '{detector.name}' model, not '{detector_name}'")
    detector.change_settings(overrides)
    return detector


def _map_for_metrics(row: ScanRow) -> np.ndarray | None:
    if row.anomaly_map is None:
        return None
    m = row.anomaly_map.astype(np.float32)
    if not np.isfinite(m).all():  # a float16 overflow of a huge score: keep the order we can
        m = np.nan_to_num(m, nan=0.0, posinf=_FLOAT16_MAX, neginf=-_FLOAT16_MAX)
    return m


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def compare_groupings(labels: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, dict[str, Any]]:
    """Each grouping method's split of one batch of scores: sizes and the suspect group's
    accuracy and recall against ``labels`` (1 = defective), or the reason it could not split."""
    from core.grouping import METHODS, SUSPECT, GroupingError, group_scores
    from core.metrics import accuracy_recall

    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        try:
            g = group_scores(scores, method, seed=seed)
        except GroupingError as exc:
            out[method] = {"normal": None, "suspect": None, "accuracy": None, "recall": None, "error": str(exc)}
            continue
        acc, rec = accuracy_recall(labels, g.labels == SUSPECT)
        normal, suspect = g.sizes
        out[method] = {"normal": normal, "suspect": suspect, "accuracy": _finite_or_none(acc),
                       "recall": _finite_or_none(rec), "error": None}
    return out


class DecodedAhead(ImageSource):
    """The images of ``source`` (files), decoded ahead by ``workers`` threads as ``scan`` decodes
    them (:func:`core.engine.stream_scan.prefetch`), read once, in order, by the scoring loop."""

    def __init__(self, source: ImageSource, workers: int, window: int, cancel: CancelToken | None = None) -> None:
        paths = [source.path(i) for i in range(len(source))]
        super().__init__(paths, [source.name(i) for i in range(len(source))])
        self._ahead = prefetch(paths, workers, window, cancel)
        self._next = 0

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice) or i != self._next:
            raise IndexError("decoded-ahead images are read once, in order")
        k, x = next(self._ahead)
        self._next += 1
        if isinstance(x, Skipped):
            raise ImageReadError(x.reason)
        return x


def _on_runtime(detector: Detector, runtime: str, precision: str, dataset: Dataset, max_train: Optional[int],
                cancel: CancelToken | None = None, recalibrate_here: bool = True) -> tuple[Detector, float]:
    """The trained ``detector`` exported to ``runtime`` (int8 calibrated on the fit images) and,
    at a precision other than float32 (``recalibrate_here``: it was trained on this dataset),
    re-calibrated on its held-out images with the runtime's scores. Returns it and the seconds
    that took."""
    t0 = time.perf_counter()
    calibration = None
    if precision == "int8":
        fit, _ = calibration_images(ImageSource(dataset.train), max_train, detector.config.seed)
        calibration = [fit[i] for i in range(min(len(fit), 64))]
    converted = apply_runtime(detector, runtime, precision, calibration)
    if recalibrate_here and calibrated_elsewhere(converted):
        recalibrate(converted, ImageSource(dataset.train), max_train=max_train, cancel=cancel)
    return converted, time.perf_counter() - t0


# --------------------------------------------------------------------------- the harness
def run_bench(
    dataset_root: str | os.PathLike,
    detector_name: str,
    layout: str = "auto",
    category: Optional[str] = None,
    device: str | torch.device = "auto",
    overrides: Optional[dict[str, Any]] = None,
    max_train: Optional[int] = None,
    max_test: Optional[int] = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    skipped: Optional[list] = None,
    model_dir: str | os.PathLike | None = None,
    save_model: str | os.PathLike | None = None,
    snapshot_minutes: Sequence[float] = (),
    snapshot_epochs: Sequence[int] = (),
    zero_shot_batch: str = "test",
    per_image: Optional[list] = None,
    self_check: Optional[bool] = None,
    auto: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
    decode_workers: Optional[int] = None,
    on_model: Optional[Callable[[Detector], Detector]] = None,
    score_runs: int = 1,
) -> dict[str, Any]:
    """Train ``detector_name`` on the training split of ``dataset_root``, score the test split
    and return the metrics and timings (see the module docstring for the keys).

    ``seed`` drives every random choice: the detector's ``seed`` setting (unless
    ``overrides`` sets it), hence the ``max_train`` subset and the held-out calibration
    images, the stratified ``max_test`` subset, and random dataset splits. ``max_train`` is
    also the few-shot setting. Unreadable images are left out and appended to ``skipped``.

    ``save_model`` saves the trained model (before scoring, with what is needed to re-derive
    its calibration images); ``model_dir`` evaluates such a saved model instead of training
    one, so that one long training can be scored under several settings (``overrides`` may
    change any setting that is not baked into the weights). When those settings change the
    score scale, the threshold is re-calibrated on the model's own held-out images if the
    model was saved by ``bench`` on this dataset; otherwise accuracy and recall are ``None``.
    ``fit_seconds`` of a loaded model is the training time it was saved with (``None`` if
    unknown).

    ``self_check`` / ``auto`` are :func:`~core.engine.workflows.train_detector`'s: the result's
    ``self_check`` is the model's self-check (synthetic defects on its held-out images: no label
    used) to put beside the real image AUROC, and ``auto`` lists the candidates ``auto`` tried.

    ``zero_shot_batch="all"`` (zero-shot detectors only) scores the training images and the test
    split together as one unlabelled batch, the training images counting as good (at most
    ``max_train`` of them, a seeded choice): the protocol
    of the zero-shot paper's Tables 1 and 2 ("we combine the anomaly and non-anomaly images in
    each category"), where defects are the minority of the batch. ``"test"`` (default) scores the
    test split alone, as for every other detector (on MVTec AD bottle, 63 of its 83 images are
    defective).

    ``snapshot_minutes`` / ``snapshot_epochs`` (with ``save_model``, for learning curves): the
    model as it stood after that much training (training clock, see
    :class:`~core.detectors.training.TrainingLoop`) is saved beside ``save_model`` as
    ``<save_model>-<label>`` (labels ``10min``, ``24ep``; see :func:`snapshot_folder`), each
    ready for ``model_dir``; its ``fit_seconds`` is its training time, and it is calibrated
    when evaluated.

    ``runtime`` / ``precision`` (:func:`core.detectors.exporting.apply_runtime`): what runs the
    detector's network while the test split is scored (``auto``: as ``scan``, the fastest runtime
    installed here for a detector that can be exported, at its default precision).
    A torch precision is set before training, so the threshold is calibrated on the scores that
    are evaluated; ONNX Runtime and OpenVINO run the trained model exported to a temporary folder
    (int8 quantised on the fit images), re-calibrated on the same held-out images when their
    precision is not float32. The result's ``runtime`` says what ran. The timed scan decodes the
    images ahead with ``decode_workers`` threads (default: as ``scan`` does), as a scan does.
    ``on_model(detector)`` (benchmark scripts: a lever the command line does not offer, such as
    ``torch.compile``) returns the detector that scores the test split, after calibration.

    ``score_runs``: how many timed scans of the test split (the timing section of the module
    docstring); at least 1, and 1 for a zero-shot detector.

    ``per_image``: a list that gets one dict per scored image (:data:`PER_IMAGE_KEYS`: path,
    label 0/1, score, group or ``None``), in the order scored, for a look at the scores
    themselves (``bench --scores OUT.csv``).

    Raises :class:`DatasetError` for a missing or unusable dataset, and the registry's
    ``UnknownDetectorError`` / ``ConfigError`` / ``DeviceError`` for a bad detector, setting
    or device, ``CheckpointError`` for an unusable ``model_dir``.
    """
    if max_train is not None and max_train < 1:
        raise ValueError("max-train must be at least 1")
    if model_dir is not None and save_model is not None:
        raise ValueError("give either a model to evaluate or a folder to save the trained model in, not both")
    if (snapshot_minutes or snapshot_epochs) and save_model is None:
        raise ValueError("snapshots need a folder to save the trained model in (save_model)")
    if score_runs < 1:
        raise ValueError("score-runs must be at least 1")
    if score_runs > 1 and get_detector_class(detector_name).zero_shot:
        # a zero-shot detector keeps what it computed on the batch (mutual's pair cache): a second
        # scan of the same batch would time the cache, not the detector
        raise ConfigError(f"{detector_name} is zero-shot and keeps what it computed on the batch, so a second "
                          "scan would time its cache; give one score run")
    if save_model is not None:
        check_save_target(save_model)
        for label in snapshot_labels(snapshot_minutes, snapshot_epochs):
            check_save_target(snapshot_folder(save_model, label))
    if model_dir is not None:
        detector = _load_bench_model(model_dir, detector_name, overrides or {}, device)
    else:
        settings = dict(overrides or {})
        settings.setdefault("seed", seed)
        detector = create_detector(detector_name, settings, device)
    if zero_shot_batch not in BATCH_CHOICES:
        raise ValueError(f"zero_shot_batch must be one of {', '.join(BATCH_CHOICES)}, not {zero_shot_batch!r}")
    if zero_shot_batch == "all" and not detector.zero_shot:
        raise ConfigError(f"{detector.name} trains on the training images, so they cannot also be in the batch it "
                          "is tested on (the whole-dataset batch is for zero-shot detectors)")
    if (snapshot_minutes or snapshot_epochs) and not detector.snapshots:
        able = [n for n in detector_names() if get_detector_class(n).snapshots]
        raise ConfigError(f"{detector.name} has no training loop to take snapshots of (snapshots: {', '.join(able)})")
    dev = detector.device
    dataset = load_bench_dataset(dataset_root, layout, category, seed)
    if not dataset.test:
        raise DatasetError(f"{dataset_root} has no test images to evaluate on")
    if not detector.zero_shot and not dataset.train and model_dir is None:
        raise DatasetError(f"{dataset_root} has no training images to train {detector.name} on")
    origin = {"dataset": str(Path(dataset_root).expanduser().resolve()), "category": dataset.category,
              "max_train": max_train, "n_train_split": len(dataset.train)}
    test_samples = [dataset.test[i] for i in stratified_subset(dataset.test, max_test, seed)]
    if zero_shot_batch == "all":
        train = list(dataset.train)
        if max_train is not None and max_train < len(train):
            keep = sorted(np.random.default_rng(seed).choice(len(train), max_train, replace=False))
            train = [train[i] for i in keep]
        test_samples = [Sample(p, 0) for p in train] + test_samples
    skipped_out = skipped if skipped is not None else []

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    # ---- training (timed in full: decoding, fitting, calibration)
    convert_seconds: float | None = None
    n_train = 0
    fit_seconds: float | None = None
    runtime = resolve_runtime(detector, runtime, precision)
    torch_first = runtime == "torch"
    if torch_first:  # the threshold is calibrated at the precision that is evaluated
        detector = apply_runtime(detector, "torch", precision)
    if model_dir is not None:
        saved = dict(detector.meta.get("bench") or {})
        if not torch_first:
            detector, convert_seconds = _on_runtime(detector, runtime, precision, dataset, saved.get("max_train"),
                                                    recalibrate_here=False)
        fit_seconds = saved.get("fit_seconds")
        n_train = _good_images_used(int(detector.meta.get("n_train", 0)), detector.threshold)
        if detector.threshold is None or detector.threshold_mismatch():
            if {k: saved.get(k) for k in origin} == origin and dataset.train:
                recalibrate(detector, ImageSource(dataset.train), max_train=saved.get("max_train"),
                            progress=SubProgress(progress, 0.0, 0.45, "re-calibrating"), cancel=cancel)
            else:
                detector.threshold = None  # its scale is not these scores': no decisions
    elif not detector.zero_shot:
        if snapshot_minutes or snapshot_epochs:
            def save_snapshot(det: Detector, label: str) -> None:
                det.meta["bench"] = {**origin, "fit_seconds": det.meta.get("train_seconds")}
                det.save(snapshot_folder(save_model, label))
            detector.snapshot_minutes = tuple(snapshot_minutes)
            detector.snapshot_epochs = tuple(snapshot_epochs)
            detector.on_snapshot = save_snapshot
        _sync(dev)
        t0 = time.perf_counter()
        report = train_detector(detector, ImageSource(dataset.train), max_train=max_train,
                                progress=SubProgress(progress, 0.0, 0.45), cancel=cancel, self_check=self_check,
                                auto=auto)
        _sync(dev)
        fit_seconds = time.perf_counter() - t0
        n_train = _good_images_used(report.n_train, report.threshold)
        skipped_out += report.skipped
        if save_model is not None:
            detector.meta["bench"] = {**origin, "fit_seconds": fit_seconds}
            detector.save(save_model)
        if not torch_first:
            detector, convert_seconds = _on_runtime(detector, runtime, precision, dataset, max_train, cancel)
    check(cancel)

    if on_model is not None:
        detector = on_model(detector)

    # ---- warm-up: the first batch, untimed
    source = ImageSource([s.path for s in test_samples])
    # a batch for each scoring lane, so that the lanes (and a runtime's requests on them) exist before the clock starts
    warm = source.subset(range(min(detector.images_per_call(), len(source))))
    detector.score(warm, SubProgress(progress, 0.45, 0.5, "warm-up"), cancel)
    _sync(dev)

    # ---- the timed scan of the whole test split
    rows: dict[int, ScanRow] = {}

    def keep(i: int, row: ScanRow) -> None:
        rows[i] = row

    workers = decode_workers or default_workers()
    scans: list[tuple[float, float]] = []  # (seconds, CPU seconds) of each timed scan
    for run in range(score_runs):
        _sync(dev)
        ahead = DecodedAhead(source, workers, window=max(2 * detector.config.batch_size, 4 * workers), cancel=cancel)
        lo = 0.5 + 0.45 * run / score_runs
        t0, c0 = time.perf_counter(), time.process_time()
        result = scan_images(detector, ahead, progress=SubProgress(progress, lo, lo + 0.45 / score_runs, "scoring"),
                             cancel=cancel, on_row=keep if run == 0 else None)
        _sync(dev)
        scans.append((time.perf_counter() - t0, time.process_time() - c0))
        if run == 0:
            skipped_out += result.skipped
    score_seconds, score_cpu = sorted(scans)[len(scans) // 2]  # the median scan (the slower middle of an even count)
    peak_gpu = float(torch.cuda.max_memory_allocated(dev)) / 2**20 if dev.type == "cuda" else None
    check(cancel)

    # ---- metrics
    if progress:
        progress(950, 1000, "metrics")
    order = sorted(rows)
    if not order:
        raise DatasetError(f"none of the {len(source)} test images of {dataset_root} could be read")
    samples = [test_samples[i] for i in order]
    scored = [rows[i] for i in order]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    scores = np.array([r.score for r in scored], dtype=np.float64)
    if detector.zero_shot:
        groups = [r.columns.get("group") for r in scored]
        predicted = None if any(g is None for g in groups) else np.array([g == "suspect" for g in groups])
    else:
        flags = [r.flagged for r in scored]
        predicted = None if any(f is None for f in flags) else np.array(flags, dtype=bool)
    maps: list[np.ndarray | None] | None = None
    masks: list[np.ndarray | None] | None = None
    if any(r.anomaly_map is not None for r in scored):
        maps = [_map_for_metrics(r) for r in scored]
        masks = [read_mask(s.mask, (EVAL_SIZE, EVAL_SIZE)) if s.mask is not None else None for s in samples]
    metrics = compute_all(labels, scores, predicted, masks, maps, size=EVAL_SIZE)
    groupings = compare_groupings(labels, scores, detector.config.seed) if detector.zero_shot else None
    if per_image is not None:
        per_image.extend({"path": str(s.path), "label": int(s.label), "score": float(r.score),
                          "group": r.columns.get("group")} for s, r in zip(samples, scored))
    if progress:
        progress(1000, 1000, "done")

    n_test = len(order)
    return {
        "detector": detector.name,
        "dataset": str(dataset_root),
        "category": dataset.category,
        "device": str(dev),
        "config": detector.config.to_dict(),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "batch": "train+test" if zero_shot_batch == "all" else "test",
        "metrics": {k: _finite_or_none(None if metrics[k] is None else float(metrics[k])) for k in METRIC_KEYS},
        "groupings": groupings,
        "timing": {
            "fit_seconds": fit_seconds,
            "score_seconds": score_seconds,
            "score_images_per_second": n_test / score_seconds if score_seconds > 0 else None,
            "score_cpu_seconds": score_cpu,
            "decode_workers": workers,
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": peak_gpu,
            "score_runs": [n_test / s if s > 0 else None for s, _ in scans],
        },
        "training": {k: detector.meta[k] for k in TRAINING_KEYS if k in detector.meta} or None,
        "self_check": detector.meta.get("self_check"),
        "auto": detector.meta.get("auto"),
        "runtime": {"runtime": detector.runtime.split()[0], "precision": detector.runtime.split()[-1],
                    "threads": torch.get_num_threads(), "convert_seconds": convert_seconds,
                    "search": detector.neighbour_search(),
                    "lanes": detector.scoring_lanes()},
        "machine": machine_info(dev),
        "version": package_version(),
    }
