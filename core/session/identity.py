"""Who, when, with which program, which model and which file: the identities a session records.

* :func:`run_key` — what makes stored scores reusable: detector, model fingerprint and every
  setting that changes a score. Two scans with the same key give the same score for the same
  image content. (The fingerprint itself is computed from a detector's weights by
  :func:`core.engine.session_scan.model_fingerprint`; this package never imports torch.)
* :func:`file_sha256` — the content hash of an image file.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def now() -> str:
    """UTC time, ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers, services)
        return os.environ.get("USER") or os.environ.get("USERNAME") or f"uid-{os.getuid() if hasattr(os, 'getuid') else '?'}"


def app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anomaly-inspector")
    except PackageNotFoundError:
        return "0+unknown"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_key(detector_name: str, fingerprint: str, settings: dict[str, Any]) -> str:
    doc = json.dumps({"detector": detector_name, "fingerprint": fingerprint, "settings": settings},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def relative_to(path: Path, folder: Path | None) -> str:
    """``path`` relative to ``folder`` (POSIX separators) when inside it, else absolute."""
    p = Path(path).resolve()
    if folder is not None:
        try:
            return p.relative_to(folder).as_posix()
        except ValueError:
            pass
    return str(p)
