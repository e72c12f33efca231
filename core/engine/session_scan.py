"""Scanning a folder into a session, scoring only what is new.

:func:`scan_into_session` records the folder's images (content hash), looks up scores the
session already holds for the same detector, model fingerprint and score settings (the run
key, :func:`core.session.identity.run_key`), scores only the new or changed images, and
stores the whole batch as a new run. The returned :class:`~core.results.ScanResult` covers
every image (reused rows carry their stored score, columns and map), so exports made from it
are complete. Zero-shot detectors are never incremental: their scores may depend on the
batch (``ldm-zero-shot``'s fallback model is trained on the batch itself) and their pretrained
weights are named by a setting rather than fingerprinted, so every run scores every image;
the batch is grouped and the session's hand moves are laid over the new grouping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from core.data.images import ImageSource, Skipped
from core.detectors.base import Detector
from core.grouping import DEFAULT_METHOD, GroupingError
from core.results import ScanResult, ScanRow, ScoreResult, make_row, regroup, score_error
from core.results.threshold import Threshold
from core.runtime.cancel import Cancelled, CancelToken
from core.runtime.progress import ProgressFn
from core.session import Session
from core.session.identity import now, run_key


def model_fingerprint(detector: Detector) -> str:
    """SHA-256 over the detector's name, state version and weight tensors (names, dtypes,
    shapes, bytes): the same weights give the same fingerprint whether the model was trained
    in this process or loaded from a folder. A detector without tensors (zero-shot, no
    pretrained weights) is identified by its name and state version."""
    h = hashlib.sha256()
    h.update(f"{detector.name}\0{detector.state_version}\0".encode())
    if detector.fitted:
        for name, tensor in sorted(detector._state().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def score_settings(detector: Detector) -> dict[str, Any]:
    """The settings that change a score or a map: every field but those marked ``neutral`` (such as
    ``batch_size``), the neutral ones marked ``map`` (a map's blur) where they differ from their
    baseline (``legacy``, else the default: so rows scored before such a field existed, or at its
    default, keep their key), and the runtime when it is not torch float32 (an exported graph or
    another precision gives scores that agree only within rounding: its rows are not mixed with
    the torch ones). Rows are reused, and a scan resumed, only under equal settings."""
    neutral = set(detector.neutral_fields())
    maps = set(detector.map_fields())
    baseline = {f.name: f.metadata.get("legacy", f.default) for f in dataclasses.fields(detector.config_class)
                if f.name in maps}
    out = {k: v for k, v in sorted(detector.config.to_dict().items())
           if k not in neutral or (k in baseline and v != baseline[k])}
    if detector.runtime != "torch float32":
        out["runtime"] = detector.runtime
    return out


@dataclass
class SessionScan:
    result: ScanResult
    #: None when the scan was interrupted (``keep_partial``): an incomplete run is not stored.
    run_id: Optional[int]
    n_new: int  # images scored by this run (new or changed since the run they would reuse)
    n_reused: int  # images whose stored score was reused

    def describe(self) -> str:
        text = f"{self.n_new} new, {self.n_reused} reused"
        return text if self.run_id is not None else f"{text}; interrupted: no run stored"


def scan_into_session(
    session: Session,
    detector: Detector,
    source: ImageSource,
    *,
    threshold: Optional[Threshold] = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    store_maps: bool = True,
    keep_partial: bool = False,
    on_row: Optional[Callable[[int, ScanRow], None]] = None,
    keep_extras: bool = False,
) -> SessionScan:
    """Scan the files of ``source`` into ``session`` as a new run, reusing stored scores.

    ``threshold`` overrides the detector's own, as in :func:`core.engine.workflows.scan_images`.
    Only file-backed sources can be stored (a session records files). With ``keep_partial`` a
    cancelled scan returns the rows scored so far (``result.interrupted``) and stores no run,
    instead of raising ``Cancelled``. ``on_row(i, row)`` is called for every row as it is known
    (reused rows first, then each scored one), so a front end can show them as they come;
    ``keep_extras`` keeps the detector's side images (reconstructions) on newly scored rows (the
    session does not store them, so reused rows have none).
    """
    paths = [source.path(i) for i in range(len(source))]
    if any(p is None for p in paths):
        raise ValueError("a session records image files; this source holds in-memory arrays")
    started = now()
    t0 = time.perf_counter()
    thr = threshold if threshold is not None else detector.threshold
    fingerprint = model_fingerprint(detector)
    settings = score_settings(detector)
    key = run_key(detector.name, fingerprint, settings)
    records = session.sync_images(paths)
    # A zero-shot detector's score may depend on the batch (ldm-zero-shot's fallback trains on
    # the batch itself) and its pretrained weights are named, not fingerprinted: never reuse.
    stored = {} if detector.zero_shot else session.reusable(key, (r.sha256 for r in records))
    todo = [i for i, r in enumerate(records) if r.sha256 not in stored]

    rows: dict[int, ScanRow] = {}
    origin: dict[int, Optional[int]] = {}
    skipped: list[Skipped] = []
    for i, rec in enumerate(records):
        s = stored.get(rec.sha256)
        if s is None:
            continue
        m = session.stored_map(s.run_id, s.sha256)
        rows[i] = ScanRow(Path(paths[i]), s.score, None if thr is None else thr.flags(s.score), (s.height, s.width),
                          m, dict(s.columns))
        origin[i] = s.run_id
        if on_row is not None:
            on_row(i, rows[i])

    def collect(j: int, res: ScoreResult) -> None:
        i = todo[j]
        if not math.isfinite(res.score):  # never stored, never "not flagged": an error for this image
            skipped.append(Skipped(Path(paths[i]), score_error(res.score)))
            return
        rows[i] = make_row(Path(paths[i]), res, res.image_shape, thr, keep_extras=keep_extras)
        origin[i] = None
        if on_row is not None:
            on_row(i, rows[i])

    interrupted = False
    if todo:
        try:
            detector.score(source.subset(todo), progress, cancel, on_result=collect, skipped=skipped)
        except Cancelled:
            if not keep_partial:
                raise
            interrupted = True
    elif progress:
        progress(len(source), len(source), f"all {len(source)} images reused")
    order = sorted(rows)
    result = ScanResult(detector.name, [rows[i] for i in order], skipped, thr, 0.0, interrupted=interrupted)
    for row in result.rows:
        row.columns.pop("group", None)  # regrouped below over the whole batch
    if detector.zero_shot:
        try:
            regroup(result, getattr(detector.config, "group", DEFAULT_METHOD), seed=detector.config.seed)
        except GroupingError as exc:
            result.grouping_note = str(exc)
    result.seconds = time.perf_counter() - t0
    n_reused = sum(1 for i in order if origin[i] is not None)
    if interrupted:
        return SessionScan(result, None, len(order) - n_reused, n_reused)
    run_id = session.record_run(result, [records[i] for i in order], fingerprint=fingerprint, settings=settings,
                                run_key=key, started_at=started, scored_in=[origin[i] for i in order],
                                store_maps=store_maps)
    session.apply_decisions(result, run_id)
    return SessionScan(result, run_id, len(order) - n_reused, n_reused)
