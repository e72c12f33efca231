"""The one training loop of the trained detectors, and the pieces of fitting they share.

In the spirit of a Lightning ``training_step``: a detector supplies **one step** (the loss of
one batch) and, where it needs them, hooks; :class:`TrainingLoop` owns everything around it —
epochs, the time budget (``max_minutes``), cancellation before every step, throttled progress
with the loss, the learning rate, elapsed time and an ETA, the divergence check, the optimizer
step and the per-epoch loss history. The detectors' own numerics (which generator draws what, in
which order) stay in their step functions, so moving a detector onto this loop changes no
result.

Also here: :func:`decode_training_cache`, which decodes the training images once into a tensor
that every epoch reuses, and :func:`pinned_weights` / :func:`check_pinned_weights`, which record
the checksum of the pretrained weights a model was trained on and refuse to load it on others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from core.data.images import iter_batches
from core.detectors.base import FitError, WeightRequirement
from core.detectors.common import infer_channels, to_tensor_batch
from core.detectors.config import ConfigError
from core.io import weights as store
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn


def fmt_seconds(s: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class TrainResult:
    """What a finished loop reports: the mean loss of every epoch run, how far it got and why it stopped."""

    history: list[float] = field(default_factory=list)
    epochs_done: int = 0
    steps: int = 0
    stopped_by: str = "epochs"  # "epochs" | "time"
    seconds: float = 0.0

    @property
    def final_loss(self) -> Optional[float]:
        return self.history[-1] if self.history else None

    def record(self) -> dict[str, Any]:
        """The training record a fitted model keeps in its ``meta``: the loss of every epoch, how
        many epochs and steps ran and why the loop stopped (``"epochs"`` or ``"time"``)."""
        return {"loss_history": [round(v, 6) for v in self.history], "final_loss": self.final_loss,
                "epochs_done": int(self.epochs_done), "steps": int(self.steps), "stopped_by": self.stopped_by}


#: ``step(batch) -> (loss, n)``: the loss of one batch (a scalar tensor that requires grad) and
#: how many samples it averaged over.
StepFn = Callable[[Any], tuple[torch.Tensor, int]]


def minutes_label(minutes: float) -> str:
    """The label of a snapshot after ``minutes`` of training (``10min``, ``2.5min``)."""
    return f"{float(minutes):g}min"


def epoch_label(epoch: int) -> str:
    """The label of a snapshot after epoch ``epoch`` (``24ep``)."""
    return f"{int(epoch)}ep"


class TrainingLoop:
    """Epochs of ``optimizer`` steps over the batches a detector hands out.

    ``budget`` says when the time budget ``max_minutes`` (0 = none) is looked at: ``"step"``
    stops before the first step past it (an epoch cut short before its first step does not
    count), ``"epoch"`` only at the end of an epoch. Progress is reported at most every
    ``report_every`` seconds (reading the loss synchronises with a GPU, so it is not read at
    every step) and at the end of each epoch; a loss that is not finite at one of those reads
    raises :class:`FitError` naming the epoch.

    Snapshots (for learning curves): ``on_snapshot(label)`` is called, with ``module`` in
    evaluation mode, after the first step at which the training clock passes each of
    ``snapshot_minutes`` (label ``"10min"``) and after each epoch listed in ``snapshot_epochs``
    (label ``"24ep"``). The time spent inside ``on_snapshot`` (saving a model) is taken off the
    training clock, so it neither eats the time budget nor moves a time-based schedule.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                 max_minutes: float = 0.0, budget: str = "step", progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None, report_every: float = 0.2,
                 snapshot_minutes: Sequence[float] = (), snapshot_epochs: Sequence[int] = (),
                 on_snapshot: Callable[[str], None] | None = None) -> None:
        if budget not in ("step", "epoch"):
            raise ValueError(f"budget must be 'step' or 'epoch', not {budget!r}")
        self.snapshot_minutes = sorted(float(m) for m in snapshot_minutes) if on_snapshot else []
        self.snapshot_epochs = set(int(e) for e in snapshot_epochs) if on_snapshot else set()
        self.on_snapshot = on_snapshot
        self._paused = 0.0
        self._module: torch.nn.Module | None = None
        self._res: TrainResult | None = None
        self.name = name
        self.optimizer = optimizer
        self.epochs = int(epochs)
        self.total_steps = max(1, int(epochs) * max(1, int(steps_per_epoch)))
        self.max_s = float(max_minutes) * 60.0
        self.budget = budget
        self.progress = progress
        self.cancel = cancel
        self.report_every = report_every
        self._t0 = 0.0

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far in the current (or last) run."""
        return self._res.steps if self._res is not None else 0

    @property
    def paused(self) -> float:
        """Seconds spent in ``on_snapshot`` so far."""
        return self._paused

    def elapsed(self) -> float:
        """Seconds of training so far (time spent saving snapshots not counted)."""
        return time.perf_counter() - self._t0 - self._paused

    def fraction(self, step: int) -> float:
        """How much of the budget (steps, or time when that runs out first) is spent."""
        frac = step / self.total_steps
        if self.max_s > 0:
            frac = max(frac, self.elapsed() / self.max_s)
        return min(1.0, frac)

    def _snapshot(self, label: str) -> None:
        t = time.perf_counter()
        if self._module is not None:
            self._module.eval()
        try:
            self.on_snapshot(label)
        finally:
            if self._module is not None:
                self._module.train()
            self._paused += time.perf_counter() - t

    def _report(self, step: int, epoch: int, mean_loss: float, extra: str = "") -> None:
        if not math.isfinite(mean_loss):
            raise FitError(f"{self.name} training diverged at epoch {epoch} (loss {mean_loss}); lower lr")
        if self.progress is None:
            return
        frac = self.fraction(step)
        elapsed = self.elapsed()
        eta = elapsed * (1.0 - frac) / frac if frac > 0 else 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        msg = (f"epoch {epoch}/{self.epochs} loss {mean_loss:.4f} lr {lr:.1e} "
               f"elapsed {fmt_seconds(elapsed)} ETA {fmt_seconds(eta)}")
        self.progress(int(frac * 1000), 1000, f"{msg}, {extra}" if extra else msg)

    def run(self, batches: Callable[[int], Iterable[Any]], step: StepFn, *, module: torch.nn.Module | None = None,
            before_step: Callable[[float], None] | None = None,
            after_step: Callable[[], None] | None = None,
            on_epoch_end: Callable[[int, float], str | None] | None = None) -> TrainResult:
        """Run the epochs. ``batches(epoch)`` hands out the epoch's batches (drawn when the epoch
        starts); ``before_step(fraction)`` runs before each step (a learning-rate schedule),
        ``after_step()`` after each optimizer step (an EMA), ``on_epoch_end(epoch, mean_loss)``
        after each epoch and may return text for the progress message. ``module`` is put in
        training mode for the run and back in evaluation mode after it (also when it fails)."""
        self._module = module
        if module is not None:
            module.train()
        try:
            return self._run(batches, step, before_step, after_step, on_epoch_end)
        finally:
            if module is not None:
                module.eval()

    def _run(self, batches, step, before_step, after_step, on_epoch_end) -> TrainResult:
        res = self._res = TrainResult()
        self._t0 = time.perf_counter()
        self._paused = 0.0
        minutes = list(self.snapshot_minutes)
        last_report = -1e9
        epoch = 0
        while epoch < self.epochs:
            epoch += 1
            loss_sum: torch.Tensor | None = None
            seen = 0
            for batch in batches(epoch):
                check(self.cancel)
                if self.budget == "step" and self.max_s > 0 and res.steps > 0 \
                        and self.elapsed() >= self.max_s:
                    res.stopped_by = "time"
                    break
                if before_step is not None:
                    before_step(self.fraction(res.steps))
                loss, n = step(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if after_step is not None:
                    after_step()
                res.steps += 1
                term = loss.detach().double() * n  # stays on the device: no sync per step
                loss_sum = term if loss_sum is None else loss_sum + term
                seen += n
                now = time.perf_counter()
                if now - last_report >= self.report_every:
                    last_report = now
                    self._report(res.steps, epoch, float(loss_sum) / seen)
                while minutes and self.elapsed() >= minutes[0] * 60.0:
                    self._snapshot(minutes_label(minutes.pop(0)))
            if seen:
                check(self.cancel)  # nothing more is reported once Cancel was pressed
                mean = float(loss_sum) / seen
                res.history.append(mean)
                extra = on_epoch_end(epoch, mean) if on_epoch_end is not None else None
                self._report(res.steps, epoch, mean, extra or "")
                last_report = time.perf_counter()
                if epoch in self.snapshot_epochs and epoch < self.epochs:
                    self._snapshot(epoch_label(epoch))
            if res.stopped_by == "time":
                if not seen:  # an epoch stopped before its first step does not count
                    epoch -= 1
                break
            if self.budget == "epoch" and self.max_s > 0 and self.elapsed() >= self.max_s:
                res.stopped_by = "time"
                break
        check(self.cancel)
        res.epochs_done = epoch
        res.seconds = self.elapsed()
        return res


def adam(params: Iterable[torch.nn.Parameter], *, decoupled: bool = False, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``AdamW`` when ``decoupled``) with the fused kernel wherever the
    parameters' device has one, else torch's default implementation. The arithmetic is Adam's
    either way (same updates up to float rounding; tested); only the speed differs. Measured
    2026-12-02 on the 2-core CPU: a step of DifferNet's 181 M-parameter flow spent 0.2 s in the
    fused update against 0.6-1.4 s in the default (for-each) one, a third of the whole step."""
    params = list(params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return cls(params, **kwargs)


def training_autocast(device: torch.device, *, cuda: bool = True, cpu: bool = False):
    """The context a training step's forward pass runs in: bfloat16 autocast on CUDA when
    ``cuda``, on the CPU when ``cpu``, else a disabled autocast (float32). Scoring never uses it.
    On a 2-core CPU with bf16 instructions (AVX-512 BF16) bf16 autocast made a VQ-VAE step 1.76x
    and a score U-Net step 1.93x faster; on one with AVX2 only bf16 is emulated and can be several
    times slower (docs/benchmarks.md, "bf16 autocast"): hence off on the CPU unless asked. It changes the
    numerics, so each model's quality is checked by benchmark before it is offered, and parts that
    cancel (the VQ-VAE's nearest-code search) opt out of it themselves."""
    if device.type == "cuda" and cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> Callable[[int], list[torch.Tensor]]:
    """``batches`` for :meth:`TrainingLoop.run`: a fresh seeded permutation of ``n`` indices each epoch."""
    return lambda _epoch: list(torch.randperm(n, generator=gen).split(batch_size))


def check_crop(crop: int, size: int, stride: int) -> None:
    """Refuse a ``train_crop`` that a model of this ``stride`` cannot take or that exceeds ``size``."""
    if crop and (crop > size or crop % stride):
        raise ConfigError(f"train_crop={crop} must be 0 or a multiple of {stride} no larger than image_size={size}")


def random_crops(data: torch.Tensor, idx: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window of each image ``data[idx]`` (offsets drawn from ``gen``).

    Fully convolutional models (the VQ-VAE, the score U-Net) learn local appearance, so they can
    be trained on crops of the working-resolution images and still score whole images: a step
    then costs ``(crop / size)^2`` of a whole-image step. ``crop`` 0 or the full size returns the
    images whole and draws nothing from ``gen``.
    """
    size_h, size_w = data.shape[-2:]
    if crop <= 0 or (crop >= size_h and crop >= size_w):
        return data[idx]
    if crop > min(size_h, size_w):
        raise ValueError(f"crop {crop} is larger than the images ({size_h}x{size_w})")
    ys = torch.randint(0, size_h - crop + 1, (idx.numel(),), generator=gen).tolist()
    xs = torch.randint(0, size_w - crop + 1, (idx.numel(),), generator=gen).tolist()
    return torch.stack([data[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx.tolist(), ys, xs)])


# ----------------------------------------------------------------------------- training images
@dataclass
class TrainingImages:
    """Decoded training images: ``data`` ``(N, C, size, size)`` in [0, 1] on the CPU."""

    data: torch.Tensor
    #: Channels of ``data``: as asked, else 3 if the first batch has colour, else 1.
    channels: int
    #: True when every readable image is grey.
    grey: bool

    @property
    def n(self) -> int:
        return int(self.data.shape[0])


def decode_training_cache(name: str, images: Sequence[np.ndarray], size: int, batch_size: int, min_images: int,
                          progress: ProgressFn | None = None, cancel: CancelToken | None = None, skipped=None, *,
                          channels: int | None = None, dtype: torch.dtype = torch.float32) -> TrainingImages:
    """Decode and resize the training images once into a CPU tensor that every epoch reuses.

    Unreadable files go to ``skipped``; ``cancel`` is checked per batch; fewer than
    ``min_images`` readable images raise :class:`FitError`. ``channels`` forces the channel
    count (a pretrained RGB backbone), ``dtype`` may halve the cache (float16).
    """
    total = len(images)
    cache: list[torch.Tensor] = []
    grey = True
    for idx, batch in iter_batches(images, batch_size, skipped, cancel):
        if channels is None:
            channels = infer_channels(batch)
        grey = grey and all(img.shape[2] == 1 for img in batch)
        cache.append(to_tensor_batch(batch, size, channels).clamp_(0.0, 1.0).to(dtype))
        if progress:
            progress(idx[-1] + 1, total)
        check(cancel)
    n = sum(c.shape[0] for c in cache)
    if n < min_images:
        raise FitError(f"{name} needs at least {min_images} readable good images, got {n}")
    data = torch.cat(cache) if cache else torch.empty(0, channels or 3, size, size, dtype=dtype)
    return TrainingImages(data, int(channels or 3), grey)


# ----------------------------------------------------------------------------- pretrained weights
def weights_requirement(preferred: Sequence[str], fallback: str) -> list[WeightRequirement]:
    """What a detector with pretrained parts needs: the first of ``preferred`` weight sets (the
    paper's) found in the store, else ``fallback`` (the offline default), unavailable with the
    store's message when that is missing too."""
    for name in preferred:
        if store.locate(name) is not None:
            return [WeightRequirement(name, True)]
    found = store.locate(fallback) is not None
    return [WeightRequirement(fallback, found, "" if found else store.missing_message(fallback))]


def backbone_weights_available(kind: str, weight_sets: dict[str, str], test_only: Sequence[str] = ()) -> tuple[bool, str]:
    """Whether backbone ``kind`` can be built here (its weight set is in the store), and why not."""
    if kind in test_only or kind == "auto":
        return True, ""
    name = weight_sets[kind]
    if store.locate(name) is None:
        return False, store.missing_message(name)
    return True, ""


def pinned_weights(weights: tuple[str, store.Location] | None) -> dict[str, Any] | None:
    """The record a model keeps of the pretrained weights it was trained on (name, SHA-256,
    where they were found); ``None`` for a backbone without a weight set."""
    if weights is None:
        return None
    name, loc = weights
    return {"name": name, "sha256": store.verify(loc.path, store.get_weight_set(name)), "source": loc.source}


def check_pinned_weights(weights: tuple[str, store.Location] | None, record: dict[str, Any] | None) -> None:
    """Refuse to load a model on pretrained weights other than those it was trained on."""
    saved = (record or {}).get("sha256")
    if not saved or weights is None:
        return
    name, loc = weights
    if store.verify(loc.path, store.get_weight_set(name)) != saved:
        raise store.ChecksumError(f"the '{name}' weights found at {loc.path} differ from those this model "
                                  f"was trained with (SHA-256 {saved[:16]}...); retrain or restore them")
