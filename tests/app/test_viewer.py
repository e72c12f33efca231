"""Issue 14's viewer essentials: heat-map scales, badges, gallery names and tile size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QWheelEvent

from app.gallery import badge_colors, elide_name, label_names
from app.image_view import ImageView, anchored_lut
from app.theme import ACCENT
from app.workers import HeatScale, anchored_scale
from core.results import ScanRow
from core.results.threshold import Threshold
from tests.app.conftest import open_folder, scan


def test_the_anchor_is_the_threshold_when_the_score_is_the_map_peak():
    rng = np.random.default_rng(0)
    maps = [rng.random((8, 8)) * k for k in (1.0, 2.0, 4.0, 8.0, 16.0)]
    scores = [float(m.max()) for m in maps]  # like pixel-gaussian: score = the map's maximum
    s = anchored_scale(scores, maps, threshold=5.0)
    assert s.anchor == pytest.approx(5.0)
    assert s.lo < s.anchor < s.hi
    assert anchored_scale(scores, maps, threshold=None) is None


def test_the_anchor_follows_the_map_level_of_images_at_the_threshold():
    maps = [np.zeros((4, 4)) for _ in range(4)]
    for m, peak in zip(maps, (1.0, 2.0, 3.0, 10.0)):
        m[1, 2] = peak
    scores = [100.0, 200.0, 300.0, 1000.0]  # other units than the maps
    assert anchored_scale(scores, maps, threshold=250.0).anchor == pytest.approx(2.5)


def test_anchored_colours_are_hot_above_the_anchor_only_and_never_opaque():
    scale = HeatScale(0.0, 3.0, 1.0)
    lut = anchored_lut(scale)
    v = np.linspace(0.0, 3.0, 256)
    above, below = lut[v > 1.0, 3], lut[v < 1.0, 3]
    assert (above >= 150).all() and (above < 255).all() and (below < 128).all()  # a step at the anchor (#26)
    assert tuple(lut[-1, :3]) != tuple(lut[0, :3])


def row_with_map(score: float, m: np.ndarray) -> ScanRow:
    return ScanRow(Path("/x/a.png"), score, score > 1.0, m.shape, anomaly_map=m.astype(np.float32))


def test_image_view_scales_and_the_threshold_on_the_colour_bar(qtbot):
    view = ImageView()
    qtbot.addWidget(view)
    m = np.linspace(0, 4, 64).reshape(8, 8)
    view.show_row(Path("/x/a.png"), row_with_map(4.0, m), Threshold.explicit(1.0))
    view.set_map_range(0.0, 50.0)
    assert view.current_scale()[0] == "batch" and not view.anchor_line.isVisible()  # no anchored scale yet
    view.set_heat_scale(HeatScale(0.0, 3.0, 1.0))
    kind, scale = view.current_scale()
    assert kind == "threshold" and scale.anchor == 1.0
    assert view.anchor_line.isVisibleTo(view.graphics.ci) and "threshold" in view.anchor_line.label.format
    assert view.colorbar.values == (0.0, 3.0)
    view.set_scale_mode("image")
    kind, scale = view.current_scale()
    assert kind == "image" and scale.hi == pytest.approx(np.percentile(m, 99.9), rel=1e-4)
    assert not view.anchor_line.isVisibleTo(view.graphics.ci)
    view.set_scale_mode("batch")
    assert view.current_scale()[1].hi == 50.0 and view.colorbar.values == (0.0, 50.0)


def test_window_anchors_the_heat_map_at_the_threshold_in_force(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, view = window.controller, window.image_view
    qtbot.waitUntil(lambda: view.heat_scale is not None, timeout=5000)
    assert view.heat_scale.anchor == pytest.approx(c.threshold.value, rel=0.02)  # pixel-gaussian: score = peak
    c.set_threshold(c.threshold.value * 1.5)
    qtbot.waitUntil(lambda: view.heat_scale.anchor == pytest.approx(c.threshold.value, rel=0.02), timeout=5000)


def _hue_distance(a: QColor, b: QColor) -> float:
    d = abs(a.hslHueF() - b.hslHueF())
    return min(d, 1 - d)


def test_badges_of_normal_images_never_take_the_flagged_colour():
    flagged_fill, _ = badge_colors(True)
    assert flagged_fill == QColor(ACCENT)
    for state in (False, None):
        fill, text = badge_colors(state)
        assert fill != QColor(ACCENT) and (fill.hslSaturationF() < 0.2 or _hue_distance(fill, QColor(ACCENT)) > 0.2)
        assert abs(fill.lightnessF() - text.lightnessF()) > 0.4  # readable


def test_gallery_names_keep_the_file_and_elide_the_folder_in_its_middle():
    fm = QFontMetrics(QFont())
    name = "broken_large/000.png"
    width = fm.horizontalAdvance("broken/000.png")
    out = elide_name(name, fm, width)
    assert out.endswith("/000.png") and "…" in out and out.startswith("br") and fm.horizontalAdvance(out) <= width
    assert elide_name(name, fm, 1000) == name
    assert elide_name("a_very_long_file_name_000.png", fm, 60).endswith("png")


def test_tile_labels_drop_a_folder_every_image_shares():
    """MTD's tiles: the category folder, not the ``Imgs`` every image sits in, must survive."""
    mtd = ["MT_Blowhole/Imgs/exp1_num_4.jpg", "MT_Free/Imgs/exp0_num_743.jpg"]
    assert label_names(mtd) == ["MT_Blowhole/…/exp1_num_4.jpg", "MT_Free/…/exp0_num_743.jpg"]
    mvtec = ["test/broken_large/000.png", "train/good/000.png", "test/good/001.png"]
    assert label_names(mvtec) == mvtec  # every folder level tells some images apart
    assert label_names(["a.png", "sub/b.png"]) == ["a.png", "sub/b.png"]  # not every name has the folder
    assert label_names(["batch/x/1.png", "batch/y/2.png"]) == ["…/x/1.png", "…/y/2.png"]
    assert label_names(["r/s/1.png", "r/s/2.png"]) == ["…/1.png", "…/2.png"]
    assert label_names([]) == []


def test_ctrl_wheel_sizes_the_tiles_and_more_than_ten_show(qtbot, window, many_parts):
    open_folder(qtbot, window, many_parts)
    g = window.gallery
    grid, port = g.view.gridSize(), g.view.viewport().size()
    assert (port.width() // grid.width()) * (port.height() // grid.height()) > 10
    before = g.thumb_size()
    ev = QWheelEvent(QPointF(20, 20), QPointF(20, 20), QPoint(0, 0), QPoint(0, 120), Qt.NoButton,
                     Qt.ControlModifier, Qt.NoScrollPhase, False)
    g.view.wheelEvent(ev)
    assert g.thumb_size() > before and g.view.gridSize().width() > grid.width()
    ev = QWheelEvent(QPointF(20, 20), QPointF(20, 20), QPoint(0, 0), QPoint(0, -120), Qt.NoButton,
                     Qt.ControlModifier, Qt.NoScrollPhase, False)
    g.view.wheelEvent(ev)
    g.view.wheelEvent(ev)
    assert g.thumb_size() < before


# ---------------------------------------------------------------- FPR, settings, export folder
def test_a_new_target_fpr_recalibrates_without_retraining(qtbot, window, parts):
    from core.results.threshold import calibrate

    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, p = window.controller, window.detector_panel
    det, old = c.detector, c.threshold
    p.fpr_spin.setValue(0.4)
    assert not c.busy and c.detector is det  # no retraining started
    assert c.threshold.fpr == pytest.approx(0.4)
    assert c.threshold.value == pytest.approx(calibrate(old.calibration_scores, 0.4).value)
    assert len(c.result.flagged) == sum(r.score > c.threshold.value for r in c.result.rows)
    assert "Run trains" not in p.model_label.text() and "re-calibrated" in c.threshold_source
    assert window.histogram.threshold.value == pytest.approx(c.threshold.value)


def test_detector_settings_are_kept_per_detector_and_across_restarts(qtbot, settings):
    from tests.app.conftest import make_window

    win = make_window(qtbot, settings)
    p = win.detector_panel
    win.select_detector("pixel-gaussian")
    p.form.set_value("blur_sigma", 2.5)
    win.select_detector("ocsvm")
    p.form.set_value("image_size", 48)
    win.select_detector("pixel-gaussian")
    assert p.overrides()["blur_sigma"] == 2.5  # back and forth: kept
    win.select_detector("ocsvm")
    win.close()
    again = make_window(qtbot, settings, detector=None)  # as restarted: no detector chosen by the test
    q = again.detector_panel
    assert q.current_name() == "ocsvm" and q.overrides()["image_size"] == 48
    again.select_detector("pixel-gaussian")
    assert q.overrides()["blur_sigma"] == 2.5


def test_the_export_dialog_starts_in_the_last_export_folder(qtbot, window, parts, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    starts: list = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: starts.append(a[2]) or "")
    window.export("flagged")
    assert starts[-1] != str(parts.batch)  # never inside the data folder
    assert window.export("flagged", str(tmp_path / "exports"))
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10000)
    window.export("heatmaps")
    assert starts[-1] == str(tmp_path / "exports")


# ---------------------------------------------------------------- pixel readout, zoom, ground truth
def test_pixel_readout_zoom_percent_and_actual_size(qtbot):
    view = ImageView()
    qtbot.addWidget(view)
    view.resize(800, 600)
    view.show()
    img = np.zeros((30, 40, 3), np.uint8)
    img[10, 20] = (200, 100, 50)
    m = np.zeros((15, 20), np.float32)
    m[5, 10] = 7.5
    path = Path("/x/a.png")
    view.show_row(path, row_with_map(7.5, m), Threshold.explicit(1.0))
    view.set_image(path, img)
    text = view.readout_at(20.5, 10.5)
    assert "x 20" in text and "y 10" in text and "RGB 200,100,50" in text and "map 7.5" in text
    assert view.readout_at(-1, 3) == "" and view.readout_at(40, 3) == ""
    view.actual_size()
    assert view.zoom_percent() == pytest.approx(100.0, rel=0.02)
    assert view.zoom_label.text() == "zoom 100 %"
    view.zoom(2.0)
    assert view.zoom_percent() == pytest.approx(200.0, rel=0.02)


def test_ground_truth_outline_for_an_mvtec_layout(qtbot, tmp_path):
    from app.workers import read_outline
    from core.data.layouts import mask_for_image as find_mask
    from tests.conftest import write_png

    cat = tmp_path / "bottle"
    img = cat / "test" / "broken_large" / "000.png"
    write_png(img, np.zeros((60, 60, 3), np.float32))
    mask = np.zeros((60, 60), np.uint8)
    mask[20:40, 10:30] = 255
    write_png(cat / "ground_truth" / "broken_large" / "000_mask.png", mask)
    write_png(cat / "test" / "good" / "000.png", np.zeros((60, 60, 3), np.float32))
    assert find_mask(img) == cat / "ground_truth" / "broken_large" / "000_mask.png"
    assert find_mask(cat / "test" / "good" / "000.png") is None
    outline = read_outline(img)
    assert outline.shape == (60, 60) and outline[20, 15] and outline[39, 15] and not outline[30, 20]
    assert not outline[:20].any()
    view = ImageView()
    qtbot.addWidget(view)
    view.show()
    view.show_row(img, None, None)
    view.set_image(img, np.zeros((60, 60, 3), np.uint8))
    view.set_outline(img, outline)
    assert view.outline_item.isVisible() and view.mask_check.isVisible()
    view.toggle_outline()
    assert not view.outline_item.isVisible()
    view.show_row(cat / "test" / "good" / "000.png", None, None)
    assert not view.mask_check.isVisible()


def test_mtd_mask_beside_the_jpeg(tmp_path):
    from core.data.layouts import mask_for_image as find_mask
    from tests.conftest import write_png

    write_png(tmp_path / "MT_Crack" / "Imgs" / "a.jpg", np.zeros((8, 8, 3), np.float32))
    write_png(tmp_path / "MT_Crack" / "Imgs" / "a.png", np.zeros((8, 8), np.uint8))
    assert find_mask(tmp_path / "MT_Crack" / "Imgs" / "a.jpg") == tmp_path / "MT_Crack" / "Imgs" / "a.png"


def test_the_gallery_says_how_far_the_thumbnails_are(qtbot):
    from app.gallery import GalleryPanel

    g = GalleryPanel()
    qtbot.addWidget(g)
    paths = [Path(f"/x/{i}.png") for i in range(3)]
    g.set_paths(paths, Path("/x"))
    assert "loading thumbnails 0 / 3" in g.count_label.text()
    g.add_thumbnails([(0, np.zeros((4, 4), np.uint8), ""), (1, None, "corrupt")])
    assert "loading thumbnails 2 / 3" in g.count_label.text()
    g.add_thumbnails([(2, np.zeros((4, 4), np.uint8), "")])
    assert "loading" not in g.count_label.text() and g.count_label.text().startswith("3 images")


def test_long_status_texts_never_widen_the_window(qtbot, window):
    window.gallery.count_label.setText("36 images · 36 scored · previous run (a-long-detector-name) " * 3)
    window.image_view.readout.setText("x 1000  y 1000  RGB 255,255,255  map 12345.6 " * 3)
    qtbot.wait(50)
    assert window.width() == 1600


def test_include_and_exclude_patterns_filter_the_folder(qtbot, window, tmp_path):
    """The folder panel's patterns reach the one core listing: typing them re-lists the open
    folder, the log names the patterns in force, and they stay for the next folder."""
    from tests.conftest import make_part, write_png

    rng = np.random.default_rng(0)
    for name in ("cam1/a.png", "cam1/b.png", "cam2/a.png", "cam2/ref_a.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_png(tmp_path / name, make_part(rng, size=24))
    logged = []
    window.controller.logged.connect(lambda level, msg: logged.append(msg))
    with qtbot.waitSignal(window.controller.folder_opened, timeout=10000):
        window.open_folder(str(tmp_path), recursive=True)
    assert len(window.controller.folder.paths) == 4
    panel = window.folder_panel
    panel.exclude_edit.setText("ref_*")
    with qtbot.waitSignal(window.controller.folder_opened, timeout=10000):
        panel.exclude_edit.editingFinished.emit()
    assert [p.name for p in window.controller.folder.paths] == ["a.png", "b.png", "a.png"]
    panel.include_edit.setText("cam1/*; nothing")
    with qtbot.waitSignal(window.controller.folder_opened, timeout=10000):
        panel.include_edit.editingFinished.emit()
    assert [str(p.relative_to(tmp_path)) for p in window.controller.folder.paths] == ["cam1/a.png", "cam1/b.png"]
    assert any("[only cam1/*; only nothing; not ref_*]" in m and "2 images" in m for m in logged)
    assert window.folder_panel.images_label.text() == "2"


def test_the_image_title_is_the_name_within_the_open_folder(qtbot, window, tmp_path):
    """MTD-like folders: the title names the defect folder (``MT_Blowhole/Imgs/x.png``), not just
    the ``Imgs`` parent every image shares; the gallery's tile label drops the shared folder."""
    from app.gallery import LabelRole
    from tests.conftest import make_part, write_png

    rng = np.random.default_rng(0)
    for name in ("MT_Blowhole/Imgs/exp1.png", "MT_Free/Imgs/exp2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_png(tmp_path / name, make_part(rng, size=24))
    with qtbot.waitSignal(window.controller.folder_opened, timeout=10000):
        window.open_folder(str(tmp_path), recursive=True)
    view = window.image_view
    view.path = tmp_path / "MT_Free" / "Imgs" / "exp2.png"
    view._update_labels()
    assert view.name_label.text() == "MT_Free/Imgs/exp2.png"
    view.path = tmp_path.parent / "elsewhere.png"
    view._update_labels()
    assert view.name_label.text() == f"{tmp_path.parent.name}/elsewhere.png"
    model = window.gallery.model
    assert sorted(model.index(i).data(LabelRole) for i in range(model.rowCount())) == [
        "MT_Blowhole/…/exp1.png", "MT_Free/…/exp2.png"]
