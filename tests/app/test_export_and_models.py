"""Exports write where they say and never replace files without asking; models save and load."""

from __future__ import annotations

import csv

import pytest
from PySide6.QtWidgets import QMessageBox

from core.io.export import SCALE_NAME
from tests.app.conftest import SMALL, make_window, open_folder, scan, wait_idle


@pytest.fixture
def scanned(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    return window


def export(qtbot, win, kind, out, **kw) -> bool:
    started = win.export(kind, str(out), **kw)
    wait_idle(qtbot, win.controller)
    return started


def test_export_flagged_list_writes_paths_and_scores(qtbot, scanned, tmp_path):
    out = tmp_path / "out"
    assert export(qtbot, scanned, "flagged", out)
    flagged = [r for r in scanned.controller.result.rows if r.flagged]
    assert (out / "flagged.txt").read_text().splitlines() == [str(r.path) for r in flagged]
    with open(out / "flagged.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "score"] and len(rows) == 1 + len(flagged)
    assert float(rows[1][1]) == pytest.approx(flagged[0].score, rel=1e-6)
    assert str(out) in scanned.statusBar().currentMessage()
    assert scanned.controller.last_export_dir == out and scanned.open_export_action.isEnabled()


def test_export_never_overwrites_silently(qtbot, scanned, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert export(qtbot, scanned, "flagged", out)
    (out / "flagged.txt").write_text("edited by hand\n")
    assert not export(qtbot, scanned, "flagged", out, overwrite=False)
    assert (out / "flagged.txt").read_text() == "edited by hand\n"
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.No)
    assert not export(qtbot, scanned, "flagged", out)
    assert asked and "flagged.txt" in asked[0][2]
    assert (out / "flagged.txt").read_text() == "edited by hand\n"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.Yes)
    assert export(qtbot, scanned, "flagged", out)
    assert (out / "flagged.txt").read_text() != "edited by hand\n"


def test_export_heat_maps_and_full_results(qtbot, scanned, tmp_path):
    out = tmp_path / "maps"
    assert export(qtbot, scanned, "heatmaps", out)
    pngs = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
    assert len(pngs) == 8 and (out / SCALE_NAME).exists()
    assert not export(qtbot, scanned, "heatmaps", out, overwrite=False)  # all of them exist now
    full = tmp_path / "full"
    assert export(qtbot, scanned, "results", full)
    assert {p.name for p in full.iterdir()} >= {"results.csv", "flagged.txt", "skipped.csv", "heatmaps"}
    assert "zz_corrupt.png" in (full / "skipped.csv").read_text()


def test_export_without_a_result_says_so(qtbot, window, tmp_path):
    assert not window.export("flagged", str(tmp_path))
    assert window.log_panel.lines[-1][0] == "error" and "Nothing to export" in window.log_panel.lines[-1][1]


def test_save_and_open_model(qtbot, scanned, settings, tmp_path):
    folder = tmp_path / "model"
    assert scanned.save_model(str(folder))
    wait_idle(qtbot, scanned.controller)
    assert (folder / "config.json").exists()
    assert not scanned.save_model(str(folder), overwrite=False)  # asks before replacing a saved model
    fresh = make_window(qtbot, settings)
    fresh.select_detector("ocsvm")
    assert fresh.open_model(str(folder))
    qtbot.waitUntil(lambda: fresh.controller.detector is not None, timeout=10000)
    det = fresh.controller.detector
    assert det.name == "pixel-gaussian" and det.config.image_size == SMALL["image_size"]
    assert fresh.detector_panel.current_name() == "pixel-gaussian"
    assert fresh.detector_panel.overrides()["image_size"] == SMALL["image_size"]
    assert det.threshold.value == pytest.approx(scanned.controller.detector.threshold.value)
    assert "trained on" in fresh.detector_panel.model_label.text()
