"""Jobs: units of long work with progress, cooperative cancel and streamed partial results.

A job is plain Python: ``run(progress, cancel, emit)`` returns the final result, reports
``progress(done, total, message)``, checks ``cancel`` and may ``emit(obj)`` partial results
(a scored row, a training loss) while it runs. :mod:`core.engine.qt_bridge` runs jobs on a
QThread; the CLI runs them in the calling thread with :func:`run_inline`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.data.images import ImageSource
from core.detectors.base import Detector
from core.detectors.registry import create_detector
from core.engine.workflows import TrainReport, scan_images, train_detector
from core.results import ScanResult
from core.results.threshold import DEFAULT_FPR, Threshold
from core.runtime.cancel import CancelToken
from core.runtime.progress import ProgressFn, null_progress

Emit = Callable[[Any], None]


class Job:
    """Base class; ``title`` is what a progress bar shows."""

    title = "job"

    def run(self, progress: ProgressFn, cancel: CancelToken, emit: Emit) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class FitOutcome:
    detector: Detector
    report: TrainReport


class FitJob(Job):
    """Build a fresh detector and train it; the caller only sees it when training succeeded."""

    def __init__(self, detector_name: str, good_folder: str | os.PathLike, *, overrides: Optional[dict] = None,
                 device: str = "auto", fpr: float = DEFAULT_FPR, threshold: Optional[float] = None,
                 max_train: Optional[int] = None, recursive: bool = False) -> None:
        self.detector_name = detector_name
        self.good_folder = Path(good_folder)
        self.overrides = dict(overrides or {})
        self.device = device
        self.fpr = fpr
        self.threshold = threshold
        self.max_train = max_train
        self.recursive = recursive
        self.title = f"Training {detector_name}"

    def run(self, progress: ProgressFn, cancel: CancelToken, emit: Emit) -> FitOutcome:
        detector = create_detector(self.detector_name, self.overrides, self.device)
        good = ImageSource.from_folder(self.good_folder, recursive=self.recursive)
        report = train_detector(detector, good, fpr=self.fpr, threshold=self.threshold, max_train=self.max_train,
                                progress=progress, cancel=cancel)
        detector.meta["good_folder"] = str(self.good_folder.resolve())  # what it learnt normal from (saved with it)
        return FitOutcome(detector, report)


class ScanJob(Job):
    """Score a set of images; each finished row is emitted as it comes."""

    def __init__(self, detector: Detector, source: ImageSource, threshold: Optional[Threshold] = None,
                 keep_extras: bool = True) -> None:
        self.detector = detector
        self.source = source
        self.threshold = threshold
        self.keep_extras = keep_extras
        self.title = f"Scoring {len(source)} images with {detector.name}"

    def run(self, progress: ProgressFn, cancel: CancelToken, emit: Emit) -> ScanResult:
        return scan_images(self.detector, self.source, threshold=self.threshold, progress=progress, cancel=cancel,
                           on_row=lambda i, row: emit((i, row)), keep_extras=self.keep_extras)


@dataclass
class CallableJob(Job):
    """Wrap ``fn(progress, cancel, emit)`` as a job (thumbnails, loading a model, exports)."""

    fn: Callable[[ProgressFn, CancelToken, Emit], Any]
    title: str = "working"
    extra: dict = field(default_factory=dict)

    def run(self, progress: ProgressFn, cancel: CancelToken, emit: Emit) -> Any:
        return self.fn(progress, cancel, emit)


def run_inline(job: Job, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
               emit: Emit | None = None) -> Any:
    """Run a job in the calling thread (CLI, tests)."""
    return job.run(progress or null_progress, cancel or CancelToken(), emit or (lambda _obj: None))
