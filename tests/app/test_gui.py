"""``run_gui`` end to end: autorun (train, then scan) and a screenshot, as the CLI uses it."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from app.gui import run_gui


@pytest.fixture
def app_style_restored(qapp):
    """run_gui styles the application; put it back for the other tests."""
    saved = qapp.styleSheet(), qapp.palette(), qapp.font(), qapp.style().name()
    yield qapp
    qapp.setStyleSheet(saved[0])
    qapp.setPalette(saved[1])
    qapp.setFont(saved[2])
    qapp.setStyle(saved[3])


def test_run_gui_autoruns_and_writes_a_screenshot(app_style_restored, tiny_parts, tmp_path):
    shot = tmp_path / "shot.png"
    code = run_gui(str(tiny_parts / "batch"), good=str(tiny_parts / "good"), detector="pixel-gaussian",
                   autorun=True, screenshot=str(shot))
    assert code == 0
    img = QImage(str(shot))
    assert (img.width(), img.height()) == (1600, 1000)
    assert not [w for w in QApplication.topLevelWidgets() if w.isVisible() and w.windowTitle().startswith("Anomaly")]


def test_run_gui_exits_with_1_when_the_job_cannot_run(app_style_restored, tiny_parts, tmp_path):
    shot = tmp_path / "shot.png"
    assert run_gui(str(tiny_parts / "batch"), autorun=True, screenshot=str(shot)) == 1  # no good folder
    assert not shot.exists()
    assert run_gui(str(tiny_parts / "batch"), detector="nope", autorun=True, screenshot=str(shot)) == 1
