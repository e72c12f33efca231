"""Per-user folders (data, config), overridable by environment variables."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_DIR_NAME = "anomaly-inspector"


def data_dir() -> Path:
    """``$ANOMALY_INSPECTOR_HOME`` or the platform's user data folder."""
    env = os.environ.get("ANOMALY_INSPECTOR_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / APP_DIR_NAME
