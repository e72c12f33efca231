"""The detector interface every method implements.

A detector is configured by a dataclass (see :mod:`core.detectors.config`), lives on a torch
device, and offers ``fit`` (a no-op for zero-shot methods), ``score``, ``save`` and ``load``.
``fit`` and ``score`` take a progress callback and a cancel token and check the token once per
batch, epoch or step. Only CPU numpy arrays leave ``score``.

Subclasses implement ``_fit(images, progress, cancel)``, ``_score_batch(images)``,
``_state()`` (tensors to save) and ``_restore(tensors, meta)``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core.data.images import Skipped, iter_batches
from core.detectors.common import check_same_layout
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.runtimes import ExportError, Graph, Runner, default_precision
from core.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.results import ScoreResult
from core.results.threshold import Threshold
from core.runtime.cancel import CancelToken, cancel_inside, check
from core.runtime.device import resolve_device
from core.runtime.lanes import lane_pool, run_in_lane, score_lanes
from core.runtime.progress import ProgressFn


@dataclass
class WeightRequirement:
    """Pretrained weights a detector needs (filled in by the weights store)."""

    name: str
    available: bool
    reason: str = ""


class NotFittedError(RuntimeError):
    pass


class FitError(RuntimeError):
    """Training could not proceed (too few images, degenerate data); the message says why."""


OnResult = Callable[[int, ScoreResult], None]


@dataclass
class _ScoringStep:
    """What :meth:`Detector._step` needs while a batch is being scored."""

    cancel: CancelToken | None
    progress: ProgressFn | None
    start: int  # images done before this batch
    size: int  # images in this batch
    total: int
    scored: int


class Detector(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str] = ""
    zero_shot: ClassVar[bool] = False
    produces_maps: ClassVar[bool] = False
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    min_train_images: ClassVar[int] = 1
    #: Bumped by a detector whenever its saved tensors change meaning.
    state_version: ClassVar[int] = 1
    #: Whether its training loop hands out learning-curve snapshots (see :meth:`_snapshots`).
    snapshots: ClassVar[bool] = False
    #: Whether training self-checks the model on synthetic defects by default (it scores six
    #: synthetic images per held-out image, up to 120: on for detectors that score fast).
    self_check_default: ClassVar[bool] = False
    #: Why this detector cannot run as an exported graph (ONNX, OpenVINO), in one clause; a
    #: detector that can implements :meth:`graphs` instead.
    export_refusal: ClassVar[str] = "its scoring is not written as an exportable network"
    #: Whether :meth:`score` may score two batches at once on a CPU, each on a lane thread of
    #: its own (:mod:`core.runtime.lanes`): a detector that sets it keeps nothing of a batch on
    #: ``self`` while scoring it, and its networks and searches may run on two threads at once.
    concurrent_batches: ClassVar[bool] = False

    def __init__(self, config: DetectorConfig | None = None, device: str | torch.device = "auto") -> None:
        cfg = config if config is not None else self.config_class()
        if not isinstance(cfg, self.config_class):
            raise ConfigError(f"{self.name} needs a {self.config_class.__name__}, not {type(cfg).__name__}")
        cfg.validate()
        self.config = cfg
        self.device = resolve_device(device)
        self.threshold: Threshold | None = None
        self.fitted = self.zero_shot
        self.meta: dict[str, Any] = {}
        #: What :meth:`_step` needs, by the thread scoring a batch (the caller's, or a lane's)
        self._steps: dict[int, _ScoringStep] = {}
        #: Learning-curve snapshots (see :meth:`_snapshots`): training-clock minutes and epochs
        #: at which ``on_snapshot(detector, label)`` gets the detector as it would be if
        #: training stopped there (it typically saves it). Not a setting: never saved.
        self.snapshot_minutes: tuple[float, ...] = ()
        self.snapshot_epochs: tuple[int, ...] = ()
        self.on_snapshot: Callable[[Detector, str], None] | None = None
        #: The runtimes running this detector's networks by name (see :meth:`use_runner`); a
        #: network without one runs as the torch module, in float32.
        self._runners: dict[str, Runner] = {}
        #: Precision of the networks that run as torch modules on the CPU: ``float32``,
        #: ``bfloat16`` (CPU autocast) or ``auto`` (:func:`core.detectors.runtimes.default_precision`:
        #: bfloat16 where the CPU has bf16 instructions). Training's reference features (a
        #: memory bank) are always float32.
        self.torch_precision = "auto"

    # ----------------------------------------------------------------- availability
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """Pretrained weights this detector needs; empty when it trains from scratch."""
        return []

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        missing = [r for r in cls.requirements() if not r.available]
        if missing:
            return False, "; ".join(f"{r.name}: {r.reason}" for r in missing)
        return True, ""

    # ----------------------------------------------------------------- training defaults
    def default_calibration(self) -> tuple[str, str]:
        """(calibration scheme, estimator) a training uses when not told: ``holdout`` /
        ``empirical`` unless a detector measured better (see ``core.engine.workflows``)."""
        return "holdout", "empirical"

    def fold_trainer(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None, for_fit: bool = False,
                     ) -> Callable[[Sequence[int], ProgressFn | None], Detector] | None:
        """Cross-calibration's fold models, faster than K trainings: a function that returns, for
        the indices ``rest`` into ``images``, a fitted model of this detector's class and settings
        trained on those images only (whatever it can share is prepared here, once). ``for_fit``:
        :meth:`fit` on the same ``images`` follows and may reuse it. None (the default): the
        workflow trains copies."""
        return None

    def auto_candidates(self, images: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
        """Settings ``train --auto`` tries, each as overrides of this detector's config, its own
        settings first; empty when the detector offers no choice. ``images``: the good images the
        candidates will be fitted on, for a candidate that only makes sense on some looks."""
        return []

    def describe_model(self) -> str:
        """What the trained model is, in one line (the model panel, ``train``)."""
        n = self.meta.get("n_train")
        return f"{self.name}" + (f", trained on {n} images" if n else "")

    # ----------------------------------------------------------------- public API
    def fit(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        skipped: list[Skipped] | None = None,
    ) -> None:
        """Learn what normal looks like from ``images`` (all normal)."""
        if self.zero_shot:
            return
        torch.manual_seed(self.config.seed)
        with cancel_inside(cancel):
            self._fit(images, progress, cancel, skipped)
        self._runners = {}  # graphs of an earlier model no longer fit this one
        self.fitted = True

    def score(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        on_result: OnResult | None = None,
        skipped: list[Skipped] | None = None,
    ) -> dict[int, ScoreResult]:
        """Score every readable image; returns ``{index in images: ScoreResult}``.

        ``on_result`` fires as each image is done, so a caller can show results as they come.
        """
        if not self.fitted:
            raise NotFittedError(f"{self.name} must be trained (fit) or loaded before scoring")
        out: dict[int, ScoreResult] = {}
        total = len(images)
        if progress:
            progress(0, total, "scoring")
        bs = max(1, int(self.config.batch_size))
        lanes = self.scoring_lanes(-(-total // bs))
        scored = self._scored_batches(iter_batches(images, bs, skipped, cancel), lanes, cancel, progress, total, out)
        try:
            with torch.inference_mode(), cancel_inside(cancel):
                for idx, batch, results in scored:
                    check(cancel)
                    for i, img, res in zip(idx, batch, results):
                        res.image_shape = (int(img.shape[0]), int(img.shape[1]))
                        out[i] = res
                        if on_result:
                            on_result(i, res)
                    if progress:
                        progress(idx[-1] + 1, total, f"scored {len(out)} of {total}")
        finally:
            scored.close()  # now, not when collected: its lanes are done when score() returns or raises
            self._steps.pop(threading.get_ident(), None)
        if progress:
            progress(total, total, f"scored {len(out)} of {total}")
        return out

    def scoring_lanes(self, batches: int = 2 ** 31) -> int:
        """How many of ``batches`` batches :meth:`score` scores at once (:mod:`core.runtime.lanes`)."""
        return score_lanes(self.device, batches) if self.concurrent_batches else 1

    def images_per_call(self) -> int:
        """How many images a caller that scores in chunks (the streamed scan, the self-check)
        hands :meth:`score` at a time: one batch for each lane it would score on."""
        return max(1, int(self.config.batch_size)) * self.scoring_lanes()

    def _scored_batches(self, batches: Iterator[tuple[list[int], list[np.ndarray]]], lanes: int,
                        cancel: CancelToken | None, progress: ProgressFn | None, total: int,
                        out: dict[int, ScoreResult]) -> Iterator[tuple[list[int], list[np.ndarray], list[ScoreResult]]]:
        """``(indices, images, results)`` of each batch, in order. With ``lanes`` > 1
        (:mod:`core.runtime.lanes`; detectors with :attr:`concurrent_batches`) up to that many
        batches are scored at once, each on a lane thread of its own; a lane's :meth:`_step`
        checks the cancel token but leaves the progress to the batches' end (in order)."""
        me = threading.get_ident()
        if lanes <= 1:
            done = 0
            for idx, batch in batches:
                self._steps[me] = _ScoringStep(cancel, progress, done, len(batch), total, len(out))
                yield idx, batch, self._score_batch(batch)
                done = idx[-1] + 1
            return

        share = max(1, torch.get_num_threads() // lanes)

        def lane(batch: list[np.ndarray]) -> list[ScoreResult]:
            key = threading.get_ident()
            self._steps[key] = _ScoringStep(cancel, None, 0, len(batch), total, 0)
            try:
                with torch.inference_mode(), cancel_inside(cancel):
                    return self._score_batch(batch)
            finally:
                self._steps.pop(key, None)

        with lane_pool(lanes, share) as pool:
            pending: deque = deque()
            try:
                for idx, batch in batches:  # the next batch is read while the lanes score
                    pending.append((idx, batch, pool.submit(run_in_lane, share, lane, batch)))
                    if len(pending) >= lanes:
                        i, b, fut = pending.popleft()
                        yield i, b, fut.result()
                while pending:
                    i, b, fut = pending.popleft()
                    yield i, b, fut.result()
            finally:  # an error, a cancel or a caller that stops: no lane goes on after this call
                for _, _, fut in pending:
                    fut.cancel()
                wait([fut for _, _, fut in pending])

    def _step(self, done: int | None = None, of: int | None = None, what: str = "") -> None:
        """The per-step hook of scoring: a detector calls it inside its own loops over a batch
        (per rotated copy, per timestep chunk, per image), as diffusers' pipelines check
        ``interrupt`` at every step. It raises :class:`~core.runtime.cancel.Cancelled` when the
        job was cancelled and, given ``done`` of ``of`` steps of the current batch, moves the
        progress on within the batch. Outside :meth:`score` it does nothing."""
        step = self._steps.get(threading.get_ident())
        if step is None:
            return
        check(step.cancel)
        if step.progress is not None and done is not None and of:
            pos = step.start + int(step.size * min(1.0, done / of))
            step.progress(pos, step.total, f"scored {step.scored} of {step.total}" + (f" ({what})" if what else ""))

    def _snapshots(self, make: Callable[[], tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        """Keyword arguments for :class:`~core.detectors.training.TrainingLoop` that fire
        ``on_snapshot``. ``make()`` returns ``(model, meta)`` of the training state as a finished
        fit would leave it (for an EMA model: the averaged copy); while ``on_snapshot`` runs they
        are this detector's model and meta, and the training state is put back after."""
        if self.on_snapshot is None or not (self.snapshot_minutes or self.snapshot_epochs):
            return {}
        callback = self.on_snapshot

        def fire(label: str) -> None:
            model, meta = make()
            saved = (getattr(self, "model", None), self.meta, self.fitted)
            self.model, self.meta, self.fitted = model, {**meta, "snapshot": label}, True
            try:
                callback(self, label)
            finally:
                self.model, self.meta, self.fitted = saved

        return {"snapshot_minutes": self.snapshot_minutes, "snapshot_epochs": self.snapshot_epochs,
                "on_snapshot": fire}

    def save(self, folder: str | os.PathLike) -> Path:
        if not self.fitted:
            raise NotFittedError(f"{self.name} has not been trained; nothing to save")
        header = {
            "detector": self.name,
            "state_version": self.state_version,
            "config": self.config.to_dict(),
            "threshold": self.threshold.to_dict() if self.threshold else None,
            "meta": self.meta,
        }
        return save_checkpoint(folder, header, self._state())

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "auto") -> Detector:
        """Load a saved model; the folder's detector name must match ``cls`` (use
        :func:`core.detectors.registry.load_model` to dispatch by name)."""
        doc, tensors = load_checkpoint(folder)
        return cls.from_saved(folder, doc, tensors, device)

    @classmethod
    def from_saved(cls, folder: str | os.PathLike, doc: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: str | torch.device = "auto", graphs: dict[str, dict[str, Any]] | None = None) -> Detector:
        """The detector of a checked ``config.json`` (``doc``) and its tensors; ``graphs`` (an
        exported folder's graph records) restores it for its graphs (:meth:`_restore_exported`)."""
        if doc["detector"] != cls.name:
            raise CheckpointError(f"{folder} holds a '{doc['detector']}' model, not '{cls.name}'")
        if int(doc.get("state_version", 1)) > cls.state_version:
            raise CheckpointError(
                f"{folder} was saved by a newer '{cls.name}' (state version {doc.get('state_version')}); update Anomaly Inspector"
            )
        try:
            cfg, _unknown = cls.config_class.from_dict(doc["config"])
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(f"corrupt model: {folder} has invalid settings ({exc})") from None
        det = cls(cfg, device=device)
        det.meta = dict(doc.get("meta") or {})
        try:
            for k, t in sorted(tensors.items()):  # no detector's weights hold NaN or infinity
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ValueError(f"'{k}' holds NaN or infinite values")
            if graphs is None:
                det._restore(tensors, det.meta)  # each detector checks its tensors' dtypes, shapes and ranges
                check_same_layout(tensors, det._state())
            else:
                det._restore_exported(tensors, det.meta, graphs)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise CheckpointError(f"corrupt model: {folder} weights do not fit '{cls.name}' "
                                  f"({' '.join(msg.split())})") from None
        det.fitted = True
        if doc.get("threshold"):
            det.threshold = Threshold.from_dict(doc["threshold"])
        return det

    @classmethod
    def fixed_fields(cls) -> tuple[str, ...]:
        """Config fields baked into trained weights (metadata ``fixed``): they cannot be changed on a loaded model."""
        return cls.config_class.marked("fixed")

    @classmethod
    def neutral_fields(cls) -> tuple[str, ...]:
        """Config fields that leave an image's score alone (metadata ``neutral``): a calibrated
        threshold still applies after they change (see :meth:`threshold_mismatch`)."""
        return cls.config_class.marked("neutral")

    @classmethod
    def map_fields(cls) -> tuple[str, ...]:
        """The neutral fields that change the heat maps (metadata ``map``): no score moves, but rows
        scored under another value carry other maps."""
        return cls.config_class.marked("map")

    def change_settings(self, overrides: dict[str, Any], hint: str = "train a new one") -> None:
        """Apply ``overrides`` (``--set`` values) to a trained model's config; raises
        :class:`ConfigError` for a field baked into the weights (metadata ``fixed``), an
        unknown field or a bad value. ``hint`` ends the message about baked-in fields; a baked-in
        field given the value it already has is no change and passes (a script may repeat the
        settings it trained with)."""
        fixed = self.fixed_fields()
        frozen = sorted(k for k in overrides if k in fixed and not self.config.has_value(k, overrides[k]))
        if frozen:
            raise ConfigError(f"cannot change {', '.join(frozen)} of a trained model ({hint})")
        self.config = self.config.with_overrides(overrides)

    def threshold_mismatch(self) -> list[str]:
        """Settings that differ from those the threshold was set under, as ``"key: old -> new"``.

        A threshold is a value on the score scale of the settings it was calibrated (or
        chosen) with; after a change of, say, the map or the score reduction of a trained
        model it no longer means anything. Empty when nothing relevant changed, when the
        model has no threshold, or when the threshold predates the record (older models).
        A setting added after the threshold was recorded counts at its ``legacy`` value (the
        value such a model is read with): the threshold was set under it.
        """
        thr = self.threshold
        if thr is None or thr.settings is None:
            return []
        now = self.config.to_dict()
        neutral = set(self.neutral_fields())
        then = {f.name: f.metadata["legacy"] for f in dataclasses.fields(self.config_class) if "legacy" in f.metadata}
        then.update(thr.settings)
        return [f"{k}: {then[k]!r} -> {now[k]!r}" for k in sorted(now)
                if k not in neutral and k in then and then[k] != now[k]]

    def decode_side(self) -> int | None:
        """The longest image side scoring can use, or None when it needs every pixel.

        A detector that brings each whole image down to its working size (``image_size``) gains
        nothing from pixels beyond a few times that size, so a streamed scan may decode a very
        large image (over :data:`core.data.images.FULL_DECODE_PIXELS`) at reduced size, its long
        side no shorter than this (:func:`core.data.images.read_image_for`): eight times the
        working size, at least 2048. A detector that looks at full resolution (tiles) returns None.
        """
        size = getattr(self.config, "image_size", None)
        return max(2048, 8 * int(size)) if isinstance(size, int) and size > 0 else None

    def to(self, device: str | torch.device) -> Detector:
        self.device = resolve_device(device)
        self._moved()
        return self

    # ----------------------------------------------------------------- runtimes
    def graphs(self, calibration: Sequence[np.ndarray] | None = None) -> list[Graph]:
        """This trained detector's networks as exportable graphs (:mod:`core.detectors.runtimes`):
        the part of scoring a runtime (ONNX Runtime, OpenVINO, torch at another precision)
        replaces; everything else stays in Python. ``calibration``: good images whose network
        inputs an int8 quantisation calibrates on. Raises :class:`ExportError` saying why a
        detector cannot be exported."""
        raise ExportError(f"{self.name} cannot be exported: {self.export_refusal}")

    def use_runner(self, name: str, runner: Runner | None) -> None:
        """Run the network ``name`` (one of :meth:`graphs`) with ``runner`` from now on (None: the
        torch module again)."""
        if runner is None:
            self._runners.pop(name, None)
        else:
            self._runners[name] = runner

    @property
    def runtime(self) -> str:
        """What runs this detector's networks, as ``"torch float32"``, ``"openvino bfloat16"``."""
        kinds = sorted({r.describe() for r in self._runners.values()})
        return ", ".join(kinds) if kinds else f"torch {self._torch_precision()}"

    def neighbour_search(self) -> str | None:
        """How a detector that searches a bank of training features finds nearest neighbours
        (``"bf16"``, ``"faiss"``, ``"torch"``; ``bench`` reports it beside the runtime), or None."""
        return None

    def _torch_precision(self) -> str:
        if self.device.type != "cpu":
            return "float32"
        if self.torch_precision == "auto":
            return default_precision("torch", self.device)
        return self.torch_precision

    def _net(self, name: str, module: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """Run the network ``name``: its runner when one is set, else ``module`` (the torch code),
        under CPU bf16 autocast when :attr:`torch_precision` says so (the output in float32)."""
        runner = self._runners.get(name)
        if runner is not None:
            return runner(*inputs)
        if self._torch_precision() == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(*inputs).float()
        return module(*inputs)

    def _restore_exported(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                          graphs: dict[str, dict[str, Any]]) -> None:
        """Like :meth:`_restore`, for a model loaded from an exported folder whose networks run as
        graphs (set with :meth:`use_runner` after this): a detector whose torch network needs
        files the exported folder does not carry (pretrained backbone weights) rebuilds only what
        its Python scoring reads. ``graphs``: each graph's record in ``export.json``."""
        self._restore(tensors, meta)

    # ----------------------------------------------------------------- for subclasses
    @abstractmethod
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None: ...

    @abstractmethod
    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]: ...

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def _moved(self) -> None:
        """Called after ``self.device`` changed; move tensors there."""


class ZeroShotDetector(Detector):
    """A detector that needs no training: ``fit`` is a no-op and nothing is saved with a
    "model" but its settings (a batch model, where one is trained while scoring, belongs to
    its batch)."""

    zero_shot: ClassVar[bool] = True

    def _fit(self, images, progress, cancel, skipped) -> None:  # pragma: no cover - fit is a no-op
        return None

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        return None
