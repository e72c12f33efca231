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
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.results.threshold import Threshold

FORMAT = "anomaly-inspector-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
#: A model folder is untrusted input: its files are read only if they are regular files
#: (not a link to a device or a pipe) under these sizes.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_WEIGHTS_BYTES = 16 * 1024 ** 3


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


def _check_file(path: Path, limit: int, what: str) -> int:
    """Size of ``path`` if it is a regular file of at most ``limit`` bytes, else CheckpointError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"corrupt model: {path.parent} has no {path.name}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read model: {path} ({exc.strerror or 'not accessible'})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"corrupt model: {path} is not a regular file (a folder, device or pipe)")
    if st.st_size > limit:
        raise CheckpointError(f"corrupt model: {path} is too large for a {what} ({st.st_size} bytes, limit {limit})")
    return st.st_size


def read_format_json(path: Path, what: str, noun: str, marker: str, newest: int, title: str) -> dict[str, Any]:
    """A JSON document of ours (a model's ``config.json``, an export's ``export.json``): the file
    checked (:func:`_check_file`), parsed, its ``format`` marker and ``format_version`` (1 to
    ``newest``) checked; every way it can be wrong is a one-line CheckpointError naming ``path``
    (``noun``: "model" or "export"; ``title``: what the marker says it is)."""
    _check_file(path, MAX_CONFIG_BYTES, what)
    try:
        # NaN, Infinity and 1e999 parse to floats; the callers' field checks name them
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"corrupt {noun}: {path} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {noun}: {path} ({exc.strerror or 'not readable'})") from None
    if not isinstance(doc, dict) or doc.get("format") != marker:
        raise CheckpointError(f"not {title}: {path} has no '{marker}' format marker")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"corrupt {noun}: format version {version!r} in {path} is not a version (1 or more)")
    if version > newest:
        raise CheckpointError(f"{noun} format version {version} in {path} is newer than this program reads "
                              f"({newest}); update Anomaly Inspector")
    return doc


def read_header(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json``; every way it can be wrong is a one-line CheckpointError."""
    root = Path(folder)
    if not root.exists():
        raise CheckpointError(f"model folder not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"not a model folder: {root} is a file")
    cfg = root / CONFIG_NAME
    if not cfg.exists() and not cfg.is_symlink():
        raise CheckpointError(f"not a model folder: {root} has no {CONFIG_NAME}")
    doc = read_format_json(cfg, "model configuration", "model", FORMAT, FORMAT_VERSION, "an Anomaly Inspector model")
    for key in ("detector", "config"):
        if key not in doc:
            raise CheckpointError(f"corrupt model: {cfg} lacks '{key}'")
    if not isinstance(doc["detector"], str):
        raise CheckpointError(f"corrupt model: 'detector' in {cfg} is not a name")
    if not isinstance(doc["config"], dict):
        raise CheckpointError(f"corrupt model: 'config' in {cfg} is not a mapping of settings")
    for key in ("meta",):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise CheckpointError(f"corrupt model: '{key}' in {cfg} is not a mapping")
    sv = doc.get("state_version", 1)
    if isinstance(sv, bool) or not isinstance(sv, int):
        raise CheckpointError(f"corrupt model: 'state_version' in {cfg} is not a number")
    for key, value in doc["config"].items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"corrupt model: setting {key}={value} in {cfg} is not a finite number")
    if doc.get("threshold") is not None:
        try:
            Threshold.from_dict(doc["threshold"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"corrupt model: the threshold in {cfg} is invalid ({exc})") from None
    return doc


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    root = Path(folder)
    doc = read_header(root)
    weights = root / WEIGHTS_NAME
    _check_file(weights, MAX_WEIGHTS_BYTES, "weights file")
    expected = doc.get("weights_sha256")
    if not isinstance(expected, str):
        raise CheckpointError(f"corrupt model: {root / CONFIG_NAME} records no checksum of the weights")
    if _sha256(weights) != expected:
        raise CheckpointError(f"corrupt model: {weights} does not match the checksum recorded in {CONFIG_NAME}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt model: cannot read {weights} ({exc})") from None
    return doc, tensors
