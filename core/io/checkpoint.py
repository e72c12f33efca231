"""Model checkpoints: ``config.json`` + ``weights.safetensors`` in one folder.

``config.json`` carries a format marker and version, the detector name and config, the
decision threshold, detector metadata and the SHA-256 of the weights file, so that a
foreign, truncated or edited folder is refused with a message instead of loading garbage.
Saving is atomic per file (write to a temporary name, then rename, weights first and
``config.json`` last), so an interrupted save never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "anomaly-inspector-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"


class CheckpointError(Exception):
    """A model folder that cannot be saved to or loaded from; the message says why."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_save_target(folder: str | os.PathLike) -> Path:
    """Raise :class:`CheckpointError` unless a model may be saved in ``folder`` (missing, empty,
    or holding a model to replace); call it before a long training, not only after."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"cannot save model: {root} is a file, not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / CONFIG_NAME).exists():
        raise CheckpointError(f"cannot save model: {root} is not empty and holds no model (choose an empty folder)")
    if (root / CONFIG_NAME).exists():
        try:
            old = json.loads((root / CONFIG_NAME).read_text())
            if old.get("format") != FORMAT:
                raise ValueError
        except (ValueError, OSError):
            raise CheckpointError(f"cannot save model: {root} holds a config.json that is not an Anomaly Inspector model") from None
    return root


def save_checkpoint(folder: str | os.PathLike, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``header`` (JSON-serialisable) and ``tensors`` into ``folder``."""
    root = check_save_target(folder)
    root.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    weights = root / WEIGHTS_NAME
    _atomic_write(weights, lambda p: save_file(clean, str(p)))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **header, "weights_sha256": _sha256(weights)}
    _atomic_write(root / CONFIG_NAME, lambda p: p.write_text(json.dumps(doc, indent=2, sort_keys=False)))
    return root


def read_header(folder: str | os.PathLike) -> dict[str, Any]:
    root = Path(folder)
    if not root.exists():
        raise CheckpointError(f"model folder not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"not a model folder: {root} is a file")
    cfg = root / CONFIG_NAME
    if not cfg.exists():
        raise CheckpointError(f"not a model folder: {root} has no {CONFIG_NAME}")
    try:
        doc = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt model: {cfg} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"not an Anomaly Inspector model: {cfg} has no '{FORMAT}' format marker")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"model format version {version} in {cfg} is newer than this program reads ({FORMAT_VERSION}); update Anomaly Inspector"
        )
    for key in ("detector", "config"):
        if key not in doc:
            raise CheckpointError(f"corrupt model: {cfg} lacks '{key}'")
    return doc


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    root = Path(folder)
    doc = read_header(root)
    weights = root / WEIGHTS_NAME
    if not weights.exists():
        raise CheckpointError(f"corrupt model: {root} has no {WEIGHTS_NAME}")
    expected = doc.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise CheckpointError(f"corrupt model: {weights} does not match the checksum recorded in {CONFIG_NAME}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt model: cannot read {weights} ({exc})") from None
    return doc, tensors
