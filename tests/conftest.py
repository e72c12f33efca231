"""Test set-up: Qt offscreen, no writes to the user's real folders, shared tiny-image helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Tiny test models run faster on one thread than on two contended ones.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The same scores on every machine and install: torch float32 where auto would pick an installed
# OpenVINO or ONNX Runtime and bf16 (tests of the runtimes ask for them; tests/core/test_runtimes.py
# checks what auto picks).
os.environ.setdefault("ANOMALY_INSPECTOR_RUNTIME", "torch")
os.environ.setdefault("ANOMALY_INSPECTOR_PRECISION", "float32")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASETS = Path(os.environ.get("AI_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep the app's data folder and Qt settings out of the user's home."""
    home = tmp_path_factory.mktemp("ai-home")
    monkeypatch.setenv("ANOMALY_INSPECTOR_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))


def write_png(path: Path, img: np.ndarray) -> Path:
    """Write float [0,1] (H,W[,C]) RGB or uint8/uint16 as PNG/TIFF/JPG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img
    if np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)  # RGB(A) -> BGR(A)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok, path
    buf.tofile(str(path))
    return path


def make_part(rng: np.random.Generator, size: int = 32, defect: bool = False) -> np.ndarray:
    """A tiny aligned 'part': bright square on dark ground with noise; a defect is a dark blob."""
    img = np.full((size, size, 3), 0.2, np.float32)
    q = size // 4
    img[q:-q, q:-q] = 0.7
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    if defect:
        c = size // 2
        img[c - 2:c + 2, c - 2:c + 2] = 0.0
    return np.clip(img, 0, 1)


@pytest.fixture
def tiny_parts(tmp_path):
    """``good/`` (12 parts) and ``batch/`` (4 good + 4 defective) of 32x32 PNGs."""
    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(tmp_path / "good" / f"g{i:02d}.png", make_part(rng))
    for i in range(4):
        write_png(tmp_path / "batch" / f"ok{i}.png", make_part(rng))
        write_png(tmp_path / "batch" / f"bad{i}.png", make_part(rng, defect=True))
    return tmp_path


@pytest.fixture
def datasets_dir():
    if not DATASETS.exists():
        pytest.skip(f"shared datasets not found at {DATASETS} (set AI_DATASETS)")
    return DATASETS
