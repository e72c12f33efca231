"""The main window driven like an inspector would: open, run, look, move the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDoubleSpinBox, QLineEdit, QSpinBox

from app.gallery import FlaggedRole, ScoreRole, ThumbRole
from core.detectors.pixel_gaussian import PixelGaussianConfig
from core.results import ScanRow
from tests.app.conftest import make_window, open_folder, scan, set_form, wait_idle


def log_text(win) -> str:
    return "\n".join(m for _level, m in win.log_panel.lines)


def test_opening_a_folder_fills_the_gallery_and_reports_skipped_files(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    model = window.gallery.model
    assert model.rowCount() == 9  # listed by extension, the corrupt one included
    thumbs = [model.index(i).data(ThumbRole) for i in range(9)]
    assert sum(t is not None for t in thumbs) == 8
    assert thumbs[8] is None and "zz_corrupt.png" in model.index(8).data(Qt.ToolTipRole)
    assert window.folder_panel.images_label.text() == "9"
    assert window.folder_panel.skipped_label.text() == "1"
    assert "Skipped" in log_text(window) and "zz_corrupt.png" in log_text(window)
    assert str(parts.batch) in window.recent_folders()
    assert window.gallery.current_path() == parts.batch / "bad0.png"  # first image selected and shown
    qtbot.waitUntil(lambda: window.image_view.image_item.isVisible(), timeout=5000)


def test_opening_a_missing_folder_is_reported_not_raised(qtbot, window, tmp_path):
    with qtbot.waitSignal(window.controller.logged, timeout=5000) as sig:
        window.open_folder(str(tmp_path / "nope"))
    assert sig.args[0] == "error" and "nope" in sig.args[1]
    assert "nope" in window.statusBar().currentMessage()


def test_run_trains_first_then_fills_gallery_and_histogram(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    arrived = []
    window.controller.rows_arrived.connect(arrived.append)
    scan(qtbot, window, good=parts.good)
    result = window.controller.result
    assert len(result.rows) == parts.n_readable and len(result.skipped) == 1
    assert arrived, "rows must appear while the scan runs, not only at the end"
    assert result.threshold is not None and result.threshold.method == "calibrated"
    flagged = {r.path.name for r in result.rows if r.flagged}
    assert flagged == {f"bad{i}.png" for i in range(4)}
    assert window.histogram.scores.size == parts.n_readable
    assert window.histogram.count_label.text() == f"flagged: 4 / {parts.n_readable}"
    model = window.gallery.model
    scores = {model.index(i).data(Qt.DisplayRole): model.index(i).data(ScoreRole) for i in range(model.rowCount())}
    assert scores["bad0.png"] == result.rows[0].score and scores["zz_corrupt.png"] is None
    tip = model.index(0).data(Qt.ToolTipRole)
    assert "pixel-gaussian" in tip and "calibrated at FPR" in tip
    assert "trained on" in window.detector_panel.model_label.text()
    assert "Scanned 8 images" in log_text(window)
    # most anomalous first
    window.gallery.set_sort_by_score(True)
    top = window.gallery.visible_paths()[:4]
    assert {p.name for p in top} == flagged
    # the selected image shows its heat map; on the batch scale when asked (the default scale is
    # anchored at the threshold: tests/app/test_viewer.py)
    window.gallery.select_path(parts.batch / "bad1.png")
    qtbot.waitUntil(lambda: window.image_view.heat_item.isVisible(), timeout=5000)
    view = window.image_view
    view.set_scale_mode("batch")
    assert view.flag_label.text() == "FLAGGED" and "score" in view.score_label.text()
    assert view.heat_item.image.shape == (32, 32)
    lo, hi = window.controller.map_range
    assert hi > lo and tuple(view.colorbar.levels()) == (lo, hi)


def test_run_without_a_model_or_good_folder_says_what_to_do(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    with qtbot.waitSignal(window.controller.logged, timeout=2000) as sig:
        assert not window.run_detector()
    assert sig.args[0] == "error" and "good" in sig.args[1]
    assert not window.controller.busy


def test_run_without_a_folder_says_what_to_do(qtbot, window):
    with qtbot.waitSignal(window.controller.logged, timeout=2000) as sig:
        assert not window.run_detector()
    assert "Open a folder" in sig.args[1]


def test_moving_the_threshold_updates_count_gallery_and_filter(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    scores = sorted(r.score for r in window.controller.result.rows)
    new = (scores[1] + scores[2]) / 2  # six images above it
    hist = window.histogram
    hist.line.setValue(np.log10(new) if hist._log else new)
    assert "release to apply" in hist.count_label.text()  # preview while dragging
    assert window.controller.threshold.method == "calibrated"  # nothing applied yet
    hist.line.sigPositionChangeFinished.emit(hist.line)
    thr = window.controller.threshold
    assert thr.method == "explicit" and abs(thr.value - new) < 1e-6 * max(1.0, new)
    assert hist.count_label.text() == f"flagged: 6 / {parts.n_readable}"
    assert sum(bool(r.flagged) for r in window.controller.result.rows) == 6
    window.gallery.set_flagged_only(True)
    assert len(window.gallery.visible_paths()) == 6
    model = window.gallery.model
    assert sum(bool(model.index(i).data(FlaggedRole)) for i in range(model.rowCount())) == 6
    assert "set by hand" in window.detector_panel.model_label.text()
    # back to the calibrated one
    window.controller.reset_threshold()
    assert hist.count_label.text() == f"flagged: 4 / {parts.n_readable}"
    assert len(window.gallery.visible_paths()) == 4


def test_keyboard_moves_through_gallery_and_toggles_views(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    view = window.gallery.view
    view.setFocus()
    first = window.gallery.current_path()
    qtbot.keyClick(view, Qt.Key_Right)
    assert window.gallery.current_path() != first
    qtbot.keyClick(view, Qt.Key_End)
    assert window.gallery.current_path() == parts.batch / "zz_corrupt.png"
    qtbot.keyClick(view, Qt.Key_Home)
    assert window.gallery.current_path() == first
    qtbot.keyClick(view, Qt.Key_PageDown)
    assert window.gallery.current_path() != first
    heat = window.image_view.heat_check.isChecked()
    qtbot.keyClick(view, Qt.Key_H)
    assert window.image_view.heat_check.isChecked() != heat
    qtbot.keyClick(view, Qt.Key_F)
    assert window.gallery.flagged_check.isChecked()
    before = window.image_view.vb.viewRange()[0]
    qtbot.keyClick(view, Qt.Key_Plus)
    after = window.image_view.vb.viewRange()[0]
    assert after[1] - after[0] < before[1] - before[0]


def test_single_key_shortcuts_leave_text_fields_alone(qtbot, window):
    edit = window.detector_panel.good_edit
    edit.setFocus()
    qtbot.keyClicks(edit, "h0-+f")
    assert edit.text() == "h0-+f"
    assert window.image_view.heat_check.isChecked() and not window.gallery.flagged_check.isChecked()
    spin = window.detector_panel.form._editors["image_size"][0]
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin, "100")
    assert spin.value() == 100


def test_unreadable_image_selected_shows_a_message(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    window.gallery.select_path(parts.batch / "zz_corrupt.png")
    qtbot.waitUntil(lambda: "cannot show" in window.image_view.message.toPlainText(), timeout=5000)


def test_extras_get_side_panels(qtbot, window, parts):
    path = parts.batch / "ok0.png"
    row = ScanRow(path, 1.0, False, (32, 32), np.zeros((32, 32), np.float16),
                  extras={"reconstruction": np.full((32, 32, 3), 0.5, np.float32), "AM": np.ones((16, 16), np.float16)})
    window.image_view.show_row(path, row, None, "fake")
    assert sorted(window.image_view._extra_views) == ["AM", "reconstruction"]
    window.image_view.show_row(path, None, None)
    assert window.image_view._extra_views == {}


def test_settings_form_is_generated_from_the_config(window):
    form = window.detector_panel.form
    editors = {name: w for name, (w, _tp) in form._editors.items()}
    assert isinstance(editors["image_size"], QSpinBox) and editors["image_size"].minimum() == 8
    assert isinstance(editors["blur_sigma"], QDoubleSpinBox)
    assert editors["blur_sigma"].toolTip().startswith("Gaussian smoothing")
    assert not editors["var_floor"].isVisible()  # advanced
    form.advanced_check.setChecked(True)
    assert editors["var_floor"].isVisible() and editors["var_floor"].value() == 1e-3
    assert PixelGaussianConfig().with_overrides(form.values()) == PixelGaussianConfig()
    window.select_detector("ocsvm")
    editors = {name: w for name, (w, _tp) in window.detector_panel.form._editors.items()}
    assert isinstance(editors["gamma"], QLineEdit) and editors["gamma"].text() == "scale"
    assert not window.detector_panel.good_row.isHidden()


def test_a_zero_that_means_something_says_what_in_the_form(window):
    """patchcore's map_sigma 0 is "as blur sigma", not "no blur"; search_dims 0 is the exact search."""
    from core.detectors.patchcore import PatchCoreConfig

    window.select_detector("patchcore")
    form = window.detector_panel.form
    editors = {name: w for name, (w, _tp) in form._editors.items()}
    assert editors["map_sigma"].text() == "as blur sigma" and editors["search_dims"].text() == "exact"
    assert editors["tile_size"].text() == "off"
    assert editors["blur_sigma"].specialValueText() == ""  # 0 is a plain number there
    assert PatchCoreConfig().with_overrides(form.values()) == PatchCoreConfig()  # the text is shown, 0 is kept
    form.set_value("map_sigma", 4.0)
    assert editors["map_sigma"].text() != "as blur sigma" and form.values()["map_sigma"] == 4.0


def test_invalid_settings_are_reported(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    window.set_good_folder(str(parts.good))
    window.select_detector("ocsvm")
    window.detector_panel.form.set_value("gamma", "lots")
    with qtbot.waitSignal(window.controller.logged, timeout=2000) as sig:
        assert not window.run_detector()
    assert sig.args[0] == "error" and "gamma" in sig.args[1]


def test_changed_settings_mark_the_model_stale_and_retrain(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    first = window.controller.detector
    set_form(window, blur_sigma=2.0)
    assert "Run trains a new one" in window.detector_panel.model_label.text()
    assert window.run_detector()
    qtbot.waitUntil(lambda: window.controller.result is not None and not window.controller.busy, timeout=20000)
    assert window.controller.detector is not first and window.controller.detector.config.blur_sigma == 2.0


def test_changed_settings_retrain(qtbot, window, parts):
    """A setting baked into the model retrains on Run (a new target FPR only re-calibrates:
    tests/app/test_viewer.py)."""
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    first = window.controller.detector
    set_form(window, blur_sigma=2.0)
    assert "Run trains a new one" in window.detector_panel.model_label.text()
    assert window.run_detector()
    qtbot.waitUntil(lambda: window.controller.result is not None and not window.controller.busy, timeout=20000)
    assert window.controller.detector is not first and window.controller.detector.config.blur_sigma == 2.0


def test_layout_and_recent_folders_are_remembered(qtbot, settings, parts):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    win.docks["histogram"].hide()
    win.close()
    again = make_window(qtbot, settings)
    assert again.docks["histogram"].isHidden()
    assert again.recent_folders()[0] == str(parts.batch)
    assert [a.text() for a in again.recent_menu.actions()] == [str(parts.batch)]


def test_subfolders_are_listed_when_the_folder_holds_only_folders(qtbot, window, parts):
    open_folder(qtbot, window, parts.root)
    info = window.controller.folder
    assert info.recursive and len(info.paths) == 12 + 9
    assert window.folder_panel.subfolders_check.isChecked()
    assert window.gallery.model.index(0).data(Qt.DisplayRole) == "batch/bad0.png"
    assert Path(window.gallery.model.path_at(0)).name == "bad0.png"
    wait_idle(qtbot, window.controller)


def test_default_detector_is_patchcore_where_its_weights_are(qtbot, settings, monkeypatch):
    from app.main_window import MainWindow
    from core.detectors.patchcore import PatchCoreDetector
    from core.detectors.registry import default_detector

    win = MainWindow(settings=settings, cuda_available=False)
    qtbot.addWidget(win)
    assert win.detector_panel.combo.currentData() == default_detector()
    if PatchCoreDetector.availability()[0]:
        assert default_detector() == "patchcore"
    monkeypatch.setattr(PatchCoreDetector, "availability", classmethod(lambda cls: (False, "no weights")))
    assert default_detector() == "pixel-gaussian"  # the no-weights fallback
    fallback = MainWindow(settings=settings, cuda_available=False)
    qtbot.addWidget(fallback)
    assert fallback.detector_panel.combo.currentData() == "pixel-gaussian"
