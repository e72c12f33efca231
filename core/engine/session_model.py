"""The model a session keeps: saved beside the session, checksummed, named by the runs it scored.

:func:`keep_model` saves a trained detector in the session's models folder (``config.json`` +
``weights.safetensors`` through the checkpoint code, which records the weights' SHA-256) and
records it in the session under its fingerprint (:func:`~core.engine.session_scan.model_fingerprint`,
the one every run of it records). :func:`load_kept_model` loads it back, refusing a folder whose
weights are not the ones recorded. A model already kept (same fingerprint, files intact) is not
saved again. The good-image folder a model was trained on travels in its ``meta``
(:data:`GOOD_KEY`, set by :class:`~core.engine.jobs.FitJob`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from core.detectors.base import Detector
from core.detectors.registry import load_model
from core.engine.session_scan import SessionScan, model_fingerprint, scan_into_session, score_settings
from core.io.checkpoint import CheckpointError, read_header
from core.session import ModelRecord, Session, SessionError

GOOD_KEY = "good_folder"


def trained_on(detector: Detector) -> Optional[Path]:
    """The folder of good images ``detector`` was trained on, when it says (None: not recorded)."""
    value = detector.meta.get(GOOD_KEY)
    return Path(value) if isinstance(value, str) and value else None


def _intact(record: ModelRecord) -> bool:
    try:
        return read_header(record.path).get("weights_sha256") == record.weights_sha256
    except CheckpointError:
        return False


def keep_model(session: Session, detector: Detector, good_folder: Optional[str | os.PathLike] = None,
               fingerprint: Optional[str] = None) -> ModelRecord:
    """Save ``detector`` beside ``session`` (once per fingerprint) and record it; returns the record.

    ``good_folder``: the good images it is used with (default: the ones it was trained on)."""
    if not detector.fitted or detector.zero_shot:
        raise SessionError(f"only a trained model can be kept ({detector.name} is "
                           f"{'zero-shot' if detector.zero_shot else 'not trained'})")
    fp = fingerprint or model_fingerprint(detector)
    good = good_folder if good_folder is not None else trained_on(detector)
    old = session.model(fp)
    if old is not None and _intact(old):
        if good is not None and old.good_folder != Path(good):
            return session.record_model(fp, old.detector, old.path, old.weights_sha256, good, old.settings)
        return old
    folder = session.models_dir() / f"{detector.name}-{fp[:16]}"
    if folder.exists() and not (folder / "config.json").exists():
        raise SessionError(f"cannot keep the model: {folder} exists and holds no model")
    detector.save(folder)
    sha = read_header(folder)["weights_sha256"]
    return session.record_model(fp, detector.name, folder, sha, good, score_settings(detector))


def load_kept_model(record: ModelRecord, device: str = "auto") -> Detector:
    """Load a kept model, checking that its weights are the ones the session recorded."""
    header = read_header(record.path)
    if header.get("weights_sha256") != record.weights_sha256:
        raise CheckpointError(f"the model kept in {record.path} is not the one the session recorded (its weights "
                              "checksum differs)")
    return load_model(record.path, device)


def scan_keeping_model(session: Session, detector: Detector, source, good_folder: Optional[str | os.PathLike] = None,
                       **scan_kw) -> tuple[SessionScan, Optional[ModelRecord], str]:
    """:func:`~core.engine.session_scan.scan_into_session` with the model kept first (a trained
    one: :func:`keep_model`), so the run it records names a model the session holds. Returns the
    scan, the model's record (None for a zero-shot detector) and why the model could not be kept
    ("" when it was): the scan goes on without it."""
    record, why = None, ""
    if detector.fitted and not detector.zero_shot:
        try:
            record = keep_model(session, detector, good_folder)
        except (OSError, CheckpointError, SessionError) as exc:
            why = f"the model could not be kept with the session: {exc}"
    return scan_into_session(session, detector, source, **scan_kw), record, why
