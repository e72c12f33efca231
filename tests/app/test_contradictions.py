"""Issue 14: the window never says one thing while the program does another.

One test per numbered contradiction of the issue; each failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from app.grouping import GroupingPanel
from core.detectors.registry import REGISTRY
from core.io.checkpoint import read_header
from core.results import ScanResult, ScanRow
from tests.app.conftest import SlowFit, SlowGaussian, make_window, open_folder, scan, set_form, trained, wait_idle
from tests.app.test_grouping_ui import TINY_LDM


def logged(win, needle: str) -> list[str]:
    return [m for _l, m in win.log_panel.lines if needle in m]


def wait_done(qtbot, win, timeout: int = 30000) -> None:
    qtbot.waitUntil(lambda: not win.controller.busy, timeout=timeout)
    wait_idle(qtbot, win.controller)


class SlowFitGaussian(SlowFit):
    """pixel-gaussian whose training takes about two seconds and checks cancel often."""

    name = "slow-fit-gaussian"
    fit_steps = 100


@pytest.fixture
def scanned(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    return window


# ---------------------------------------------------------------- 1. one threshold in force
def test_1_opened_model_threshold_is_the_one_everywhere(qtbot, scanned, tmp_path, monkeypatch):
    win, c = scanned, scanned.controller
    model = tmp_path / "model"
    assert win.save_model(str(model))
    wait_done(qtbot, win)
    model_thr = c.detector.threshold.value
    c.set_threshold(-1.0)  # dragged by hand: everything flagged
    assert all(r.flagged for r in c.result.rows)
    win.ask_questions = True  # the opened model's threshold replaces the hand-set one only when asked to (#26)
    asked: list = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.Yes)
    assert win.open_model(str(model))
    qtbot.waitUntil(lambda: c.detector is not None and not c.busy, timeout=10000)
    wait_idle(qtbot, c)
    assert asked and "set by hand" in asked[0]
    assert c.threshold.value == pytest.approx(model_thr)
    assert win.histogram.threshold.value == pytest.approx(model_thr)
    win.gallery.select_row(0)
    assert win.image_view.threshold.value == pytest.approx(model_thr)
    expected = sum(r.score > model_thr for r in c.result.rows)
    assert len(c.result.flagged) == expected
    assert win.histogram.count_label.text().startswith(f"flagged: {expected} / ")
    assert "from the model" in c.threshold_source and "from the model" in win.histogram.info_label.text()
    assert f"{model_thr:.4g}" in win.detector_panel.model_label.text()
    assert win.export("flagged", str(tmp_path / "out"))
    wait_done(qtbot, win)
    assert len((tmp_path / "out" / "flagged.txt").read_text().splitlines()) == expected


# ---------------------------------------------------------------- 2. a hand threshold and saving
def test_2_saving_asks_whether_to_store_the_hand_threshold(qtbot, scanned, tmp_path, monkeypatch):
    win, c = scanned, scanned.controller
    calibrated = c.detector.threshold.value
    c.set_threshold(calibrated * 2)
    asked: list = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.Yes)
    assert win.save_model(str(tmp_path / "with-hand"))
    wait_done(qtbot, win)
    assert asked and "by hand" in asked[0]
    thr = read_header(tmp_path / "with-hand")["threshold"]
    assert thr["method"] == "explicit" and thr["value"] == pytest.approx(calibrated * 2)
    c.set_threshold(calibrated * 3)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.No)
    assert win.save_model(str(tmp_path / "calibrated"))
    wait_done(qtbot, win)
    thr = read_header(tmp_path / "calibrated")["threshold"]
    assert thr["value"] == pytest.approx(calibrated * 2)  # what the model in memory holds now
    assert logged(win, "not saved with the model")


# ---------------------------------------------------------------- 3. the good folder shown is the one used
def test_3_a_good_folder_that_does_not_exist_blocks_training(qtbot, window, parts, tmp_path):
    open_folder(qtbot, window, parts.batch)
    window.set_good_folder(str(parts.good))
    set_form(window)
    p = window.detector_panel
    assert p.train_button.isEnabled()
    missing = tmp_path / "no-such-folder"
    p.good_edit.setText(str(missing))  # typed, not even confirmed with Enter
    assert window.controller.good_folder == missing
    assert not p.train_button.isEnabled() and not p.run_button.isEnabled()
    assert "not found" in p.good_edit.toolTip() and p.good_edit.property("invalid")
    assert not window.train() and not window.run_detector()
    assert not window.controller.busy and window.controller.detector is None
    p.good_edit.setText(str(parts.good))
    assert p.train_button.isEnabled() and p.run_button.isEnabled()


# ---------------------------------------------------------------- 4. stale results are marked
def test_4_previous_results_are_marked_while_a_new_run_trains(qtbot, settings, parts, monkeypatch):
    monkeypatch.setitem(REGISTRY, SlowFitGaussian.name, SlowFitGaussian)
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    win.gallery.select_row(0)
    assert "previous run" not in win.image_view.score_label.text()
    win.select_detector(SlowFitGaussian.name)
    set_form(win)
    assert win.run_detector()  # trains a new model first; the old results stay until replaced
    assert win.controller.busy and win.controller.result is not None
    assert win.controller.stale
    assert "previous run" in win.image_view.score_label.text()
    assert "previous run" in win.histogram.info_label.text()
    assert win.gallery.stale and "previous run" in win.gallery.count_label.text()
    wait_done(qtbot, win)
    assert not win.controller.stale and win.controller.result.detector == SlowFitGaussian.name
    assert "previous run" not in win.image_view.score_label.text() and not win.gallery.stale


def grouped_result(scores) -> ScanResult:
    from core.grouping import group_scores
    from core.results import apply_grouping

    res = ScanResult("ldm-zero-shot", [ScanRow(Path(f"{i}.png"), s, None, (8, 8)) for i, s in enumerate(scores)],
                     [], None)
    apply_grouping(res, group_scores(list(scores), "kmeans"))
    return res


def test_4_previous_groups_are_marked_while_a_new_scan_runs(qtbot):
    panel = GroupingPanel()
    qtbot.addWidget(panel)
    res = grouped_result([0.1, 0.11, 0.12, 0.9, 0.13, 0.1])
    panel.set_result(res)
    panel.set_current(res.rows[0].path)
    assert panel.move_button.isEnabled()
    panel.set_stale("previous run (ldm-zero-shot)")
    assert "previous run" in panel.info_label.text() and not panel.move_button.isEnabled()
    assert not panel.method_combo.isEnabled()
    panel.set_stale("")
    assert "previous run" not in panel.info_label.text() and panel.move_button.isEnabled()


# ---------------------------------------------------------------- 5. Esc and closing while busy
#: One image per batch; a blur of its own, so that the folder's session holds no scores of these
#: settings to reuse and every image is really scored (slowly).
SLOW = {"batch_size": 1, "blur_sigma": 1.1}


def start_slow_scan(qtbot, win, good, delay=0.3):
    win.controller.set_detector(trained(SlowGaussian, good, delay=delay, **SLOW))
    set_form(win, **SLOW)
    with qtbot.waitSignal(win.controller.rows_arrived, timeout=10000):
        assert win.run_detector()


def test_5_esc_on_a_job_that_finished_behind_the_dialog_says_so(qtbot, window, parts, monkeypatch):
    open_folder(qtbot, window, parts.batch)
    start_slow_scan(qtbot, window, parts.good, delay=0.05)

    def answer_after_the_job_ended(*_a, **_k):
        qtbot.waitUntil(lambda: not window.controller.busy, timeout=10000)
        return QMessageBox.Yes

    monkeypatch.setattr(QMessageBox, "question", answer_after_the_job_ended)
    assert not window.request_cancel()
    assert window.controller.result is not None  # the complete scan stays
    assert logged(window, "finished before")
    assert "finished before" in window.statusBar().currentMessage()


def test_5_closing_while_busy_asks_and_shows_the_shutdown(qtbot, settings, parts, monkeypatch):
    win = make_window(qtbot, settings)
    win.confirm_close_when_busy = True
    open_folder(qtbot, win, parts.batch)
    start_slow_scan(qtbot, win, parts.good, delay=1.0)
    asked: list = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.No)
    win.close()
    assert asked and win.isVisible() and win.controller.busy  # "No": keep working
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.Yes)
    win.close()
    # close() returned while the job still winds down: the UI thread did not wait on it
    assert win.controller.runner.is_running() and win.isVisible()
    assert len(asked) == 2 and "Cancelling" in win.detector_panel.progress_label.text()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=10000)
    assert not win.controller.runner.is_running()


# ---------------------------------------------------------------- 6. zero-shot wording
def test_6_zero_shot_panel_and_log_say_what_happens(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    window.controller.set_detector(trained(good=parts.good))
    window.select_detector("ldm-zero-shot")
    p = window.detector_panel
    assert "Run trains a new one" not in p.model_label.text() and "Zero-shot" in p.model_label.text()
    assert not p.fpr_label.isVisibleTo(p) and not p.fpr_spin.isVisibleTo(p)
    for k, v in TINY_LDM.items():
        p.form.set_value(k, v)
    assert window.run_detector()
    wait_done(qtbot, window)
    assert not logged(window, "no training needed")


# ---------------------------------------------------------------- 7. progress bar and its label agree
def test_7_progress_label_gives_the_bar_s_fraction(qtbot, window):
    p = window.detector_panel
    p.set_busy("Scoring 83 images with ldm-zero-shot")
    p.set_progress(900, 1000, "scored 32 of 83")  # a stage's count inside a larger job
    assert p.progress.value() == 900
    assert p.progress_label.text().startswith("90 %") and "scored 32 of 83" in p.progress_label.text()


# ---------------------------------------------------------------- 8. the grouping plot's empty state and axis
def test_8_grouping_plot_before_any_run_and_its_axis_units(qtbot):
    panel = GroupingPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.plot.isVisible() and not panel.normal_text.isVisible()
    panel.set_result(grouped_result([0.599 + i * 0.001 for i in range(6)]))
    assert panel.plot.isVisible()
    axis = panel.plot.getPlotItem().getAxis("bottom")
    assert axis.autoSIPrefixScale == 1.0 and "x0.001" not in axis.labelString()
