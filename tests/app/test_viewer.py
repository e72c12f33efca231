"""Issue 14's viewer essentials: heat-map scales, badges, gallery names and tile size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QWheelEvent

from app.gallery import badge_colors, elide_name
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


def test_anchored_colours_are_hot_and_opaque_above_the_anchor_only():
    scale = HeatScale(0.0, 3.0, 1.0)
    lut = anchored_lut(scale)
    v = np.linspace(0.0, 3.0, 256)
    assert (lut[v > 1.0, 3] == 255).all() and (lut[v < 1.0, 3] < 128).all()
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
