"""Fixtures for the GUI tests: a window with throwaway settings, tiny folders, a slow detector."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import QSettings

from app.main_window import MainWindow
from core.data.images import ImageSource
from core.detectors.pixel_gaussian import PixelGaussianConfig, PixelGaussianDetector
from core.engine.workflows import train_detector
from core.runtime.cancel import check
from tests.conftest import make_part, write_png

#: Detector settings small enough for 32 px images and quick tests.
SMALL = {"image_size": 32, "batch_size": 4, "blur_sigma": 1.0}


class SlowGaussian(PixelGaussianDetector):
    """pixel-gaussian that takes ``delay`` seconds per batch, to catch work done on the UI thread."""

    delay = 0.05

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.scoring_threads: set[str] = set()

    def _score_batch(self, images):
        self.scoring_threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return super()._score_batch(images)


class SlowFit(PixelGaussianDetector):
    """pixel-gaussian whose training sleeps ``fit_steps`` x 20 ms first, checking cancel at each step."""

    name = "slow-fit"
    fit_steps = 200

    def _fit(self, images, progress, cancel, skipped):
        for _ in range(self.fit_steps):
            time.sleep(0.02)
            check(cancel)
        super()._fit(images, progress, cancel, skipped)


def trained(cls=PixelGaussianDetector, good: Path | None = None, delay: float | None = None, **overrides):
    det = cls(PixelGaussianConfig(**{**SMALL, **overrides}), device="cpu")
    if delay is not None:
        det.delay = delay
    train_detector(det, ImageSource.from_folder(good))
    return det


@pytest.fixture
def parts(tiny_parts):
    """``good/`` (12), ``batch/`` (4 good + 4 defective + 1 corrupt file)."""
    (tiny_parts / "batch" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return SimpleNamespace(root=tiny_parts, good=tiny_parts / "good", batch=tiny_parts / "batch", n_readable=8)


@pytest.fixture
def many_parts(tmp_path):
    """100 small parts (10 defective) for the responsiveness test."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "many"
    for i in range(100):
        write_png(folder / f"p{i:03d}.png", make_part(rng, defect=i % 10 == 0))
    return folder


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)


def make_window(qtbot, settings, detector: str | None = "pixel-gaussian") -> MainWindow:
    win = MainWindow(settings=settings, cuda_available=False)
    win.confirm_close_when_busy = False  # teardown closes windows: never wait on a dialog there
    win.ask_before_discarding = False  # nor on the discard prompt (tested on its own)
    win.ask_questions = False  # nor on the controller's questions: each gets its safe answer, No (tested on their own)
    qtbot.addWidget(win)  # closed (which cancels and waits for jobs) at teardown
    # the GUI tests drive the cheap baseline (the window's default is patchcore where its weights are);
    # detector=None keeps what the window restored from its settings
    if detector is not None:
        win.select_detector(detector)
    win.show()
    return win


@pytest.fixture
def window(qtbot, settings):
    return make_window(qtbot, settings)


def set_form(win: MainWindow, **values) -> None:
    for k, v in {**SMALL, **values}.items():
        win.detector_panel.form.set_value(k, v)


def wait_idle(qtbot, controller, timeout: int = 15000) -> None:
    """Until no main task and no folder/thumbnail/scale job is under way."""
    qtbot.waitUntil(lambda: not controller.busy and not any(
        controller.helper_running(k) for k in ("list", "thumbnails", "range")), timeout=timeout)


def open_folder(qtbot, win: MainWindow, folder: Path) -> None:
    with qtbot.waitSignal(win.controller.folder_opened, timeout=10000):
        win.open_folder(str(folder))
    wait_idle(qtbot, win.controller)


def scan(qtbot, win: MainWindow, good: Path | None = None, timeout: int = 30000) -> None:
    """Run the detector (training first when needed) and wait for the complete result."""
    if good is not None:
        win.set_good_folder(str(good))
    set_form(win)
    assert win.run_detector()
    qtbot.waitUntil(lambda: win.controller.result is not None and not win.controller.busy, timeout=timeout)
    wait_idle(qtbot, win.controller)
