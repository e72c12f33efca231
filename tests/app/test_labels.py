"""Issue 26, part 5: what is on screen is labelled so that it cannot be misread.

Names that tell images apart everywhere, one word for one thing (the score threshold and its
level on the heat map's scale; "flagged" and the band's "fail"), the calibration's warning and
the ROC's basis in view, nothing stale left unlabelled, a layout that fits 1600 x 1000 and
1366 x 768, and a heat map that lets the defect show through.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QApplication

from app import gallery_tiles
from app.gallery import THUMB_MIN, LabelRole
from app.image_view import anchored_lut
from app.workers import HeatScale
from core.session.report import build_report
from tests.app.conftest import SlowGaussian, open_folder, scan, set_form, trained, wait_idle
from tests.conftest import make_part, write_png


def tiles(win) -> dict[str, list[str]]:
    """The lines each tile draws under its thumbnail, by tooltip path."""
    g = win.gallery
    fm = QFontMetrics(g.delegate.name_font(g.view.font()))
    width = g.delegate.name_width()
    m = g.model
    return {str(m.path_at(i)): gallery_tiles.tile_lines(m.index(i).data(LabelRole), fm, width) for i in range(m.rowCount())}


@pytest.fixture
def same_names(tmp_path):
    """Images of the same file name in different defect folders (MVTec's broken_large/000.png and
    broken_small/000.png; MTD's MT_*/Imgs/ tiles)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "same"
    for sub in ("broken_large", "broken_small"):
        write_png(root / sub / "000.png", make_part(rng, defect=True))
    mtd = tmp_path / "mtd"
    for cat in ("MT_Blowhole", "MT_Break"):
        write_png(mtd / cat / "Imgs" / "exp1_num_104089.png", make_part(rng, defect=True))
        write_png(mtd / cat / "Imgs" / "exp1_num_110231.png", make_part(rng))
    return root, mtd


def test_5_names_tell_images_apart_on_small_tiles_and_in_the_header(qtbot, window, parts, same_names):
    root, mtd = same_names
    open_folder(qtbot, window, root)
    window.gallery.set_thumb_size(THUMB_MIN)
    lines = tiles(window)
    large, small = lines[str(root / "broken_large" / "000.png")], lines[str(root / "broken_small" / "000.png")]
    assert large != small and large[-1] == small[-1] == "000.png"
    open_folder(qtbot, window, mtd)
    first = window.gallery.current_path()  # shown as soon as the folder opens: its header names its category
    assert first.parent.parent.name in window.image_view.name_label.text()
    lines = tiles(window)
    assert all(v[0].startswith("MT_") and len(v) == 2 for v in lines.values()), lines  # the category, on every tile
    assert len({tuple(v) for v in lines.values()}) == 4
    path = mtd / "MT_Blowhole" / "Imgs" / "exp1_num_104089.png"
    window.gallery.select_path(path)
    before = window.image_view.name_label.text()
    assert "MT_Blowhole" in before and "exp1_num_104089.png" in before
    scan(qtbot, window, good=parts.good)
    window.gallery.select_path(path)
    assert window.image_view.name_label.text() == before  # the same name before and after scoring


def test_5_the_score_threshold_and_its_map_level_read_as_one(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, v = window.controller, window.image_view
    window.gallery.select_path(max(c.result.rows, key=lambda r: r.score).path)
    qtbot.waitUntil(lambda: v.heat_scale is not None and v.heat_item.isVisible(), timeout=10000)
    thr = f"{c.threshold.value:.4g}"
    assert f"threshold (score) {thr}" in v.score_label.text()
    bar = v.colorbar.getAxis("left").labelText
    assert "threshold level" not in bar and "map" in bar and thr in bar  # the map level of that score
    html = build_report(c.session, c.run_id)
    cards = dict((k, int(n)) for n, k in re.findall(r'<div class="card[^"]*"><b>(\d+)</b><span>([^<]+)</span>', html))
    assert f"flagged (score &gt; {thr})" in cards


def test_5_the_band_cards_say_their_bounds(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    scores = sorted(r.score for r in c.result.rows)
    assert c.set_review_band(scores[1], scores[-2])
    html = build_report(c.session, c.run_id)
    assert f"band fail (score &gt; {scores[-2]:.4g})" in html and f"band pass (score ≤ {scores[1]:.4g})" in html


def test_5_the_panel_says_what_the_default_cross_calibrated_threshold_rests_on(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)  # 12 good images: cross-calibrated, the tail read at 0.01
    p, c = window.detector_panel, window.controller
    assert c.detector.threshold.scheme == "kfold-5" and c.detector.threshold.n_calibration == 12
    assert "calibrated at FPR 0.01 on 12 good images (kfold-5 cross-calibration), fitted tail" in p.model_label.toolTip()
    assert "held-out" not in p.model_label.toolTip().split("self-check")[0]  # nothing was held out from the model


def test_5_the_calibration_warning_is_in_the_panel_and_the_roc_says_what_it_rests_on(qtbot, window, parts,
                                                                                     monkeypatch):
    from core.detectors.pixel_gaussian.detector import PixelGaussianDetector

    monkeypatch.setattr(PixelGaussianDetector, "default_calibration", lambda self: ("holdout", "empirical"))
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)  # 12 good images: 3 held out, too few for FPR 0.01
    p, c = window.detector_panel, window.controller
    assert p.support_label.isVisibleTo(p) and "3 held-out images" in p.support_label.text()
    assert "3 calibration images" in p.support_label.toolTip()  # the whole of core's warning
    rows = sorted(c.result.rows, key=lambda r: r.score)
    c.set_verdict(rows[0].path, "ok")
    c.set_verdict(rows[1].path, "ng")
    c.set_verdict(rows[-1].path, "ng")
    dlg = window.show_curves()
    dlg.recall.setValue(1.0)
    assert "AUROC" in dlg.info.text() and "2 NG, 1 OK" in dlg.info.text()
    dlg.apply_button.click()
    assert c.threshold_source == "set from the verdict ROC at recall 1"
    assert "verdict ROC at recall 1" in window.histogram.info_label.text()


def test_5_a_cancelled_first_scan_leaves_no_colour_level(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    c = window.controller
    det = trained(SlowGaussian, parts.good, delay=0.0, batch_size=1, blur_sigma=1.2)
    det.delay = 1.5  # 12 s of scoring: time enough for a live colour scale, never for the end
    c.set_detector(det)
    set_form(window, batch_size=1, blur_sigma=1.2)
    assert window.run_detector()
    qtbot.waitUntil(lambda: window.image_view.heat_scale is not None, timeout=20000)  # the live estimate
    assert c.cancel()
    qtbot.waitUntil(lambda: not c.busy, timeout=20000)
    wait_idle(qtbot, c)
    assert c.result is None
    assert window.image_view.heat_scale is None and not window.image_view.anchor_line.isVisible()


def test_5_results_of_another_detector_than_the_panels_are_labelled(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    window.select_detector("ocsvm")
    text = window.gallery.count_label.text()
    assert "pixel-gaussian" in text and "ocsvm" in text
    window.select_detector("pixel-gaussian")
    assert "ocsvm" not in window.gallery.count_label.text()


def test_5_an_empty_folder_says_so_in_the_gallery(qtbot, window, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    open_folder(qtbot, window, empty)
    assert window.gallery.empty_label.isVisibleTo(window.gallery)
    assert "no image files" in window.gallery.empty_label.text() and str(empty) in window.gallery.empty_label.text()


def test_5_a_missing_good_folder_blocks_run_and_says_why(qtbot, window, parts, tmp_path):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    p = window.detector_panel
    p.good_edit.setText(str(tmp_path / "gone"))
    assert not p.run_button.isEnabled() and not p.train_button.isEnabled()
    assert "not found" in p.model_label.text()


@pytest.mark.parametrize("size", [(1600, 1000), (1366, 768)])
def test_5_layout_fits_at_both_sizes(qtbot, window, parts, tmp_path, size):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    window.resize(*size)
    p, v, h = window.detector_panel, window.image_view, window.histogram
    p.set_busy("Training patchcore")
    p.set_progress(40, 100, "memory bank: 120 of 188 images")
    v.readout.setText("x 1023  y 1023  RGB 255,255,255  map 123.4")
    for _ in range(5):
        QApplication.processEvents()
    window.grab().save(str(tmp_path / f"window-{size[0]}x{size[1]}.png"))
    for b in (p.train_button, p.run_button, p.cancel_button):
        assert b.isVisibleTo(window) and b.width() >= b.sizeHint().width(), b.text()
        assert b.visibleRegion().boundingRect().size() == b.size(), f"{b.text()} is cut off"
    assert v.readout.width() >= QFontMetrics(v.readout.font()).horizontalAdvance(v.readout.text())
    info = h.info_label
    assert info.visibleRegion().boundingRect().size() == info.size()
    assert info.height() >= info.heightForWidth(info.width()), "the threshold's provenance is clipped"


def test_5_the_heat_map_lets_the_defect_show_through():
    lut = anchored_lut(HeatScale(0.0, 3.0, 1.0))
    top = lut[-1]
    assert top[3] < 255, "the hottest colour must not hide the part"
    above = lut[lut[:, 3] > 0][-60:, 3].astype(int)
    assert (np.diff(above) >= 0).all() and above[-1] > above[0]  # the overlay ramps up, never a wall


def test_5_report_heat_maps_have_a_colour_bar(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    html = build_report(c.session, c.run_id)
    assert 'class="colorbar"' in html and "map value" in html
