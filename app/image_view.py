"""The selected image, its heat map and the detector's side images.

The image and the heat map are two pyqtgraph ``ImageItem`` layers in one view box; the heat
map (stored small by the scan) is stretched over the image's rectangle. Its colours come from
the shared colormap on one of three scales, which the colour bar beside the image gives in
map units: anchored at the threshold (default: the lower half of the colours up to the
threshold's map level, marked on the bar, and everything above it hot and opaque), the
batch-wide scale (the one exports use), or this image's own range. Low values fade to
transparent so that the part stays visible under the map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.theme import ACCENT, MUTED, heat_colormap
from app.workers import HeatScale, image_scale
from core.io.colormap import lut
from core.results import ScanRow
from core.results.threshold import Threshold

FADE = 0.15  # the lowest 15 % of the scale fade in from transparent


SCALES = {"threshold": "at threshold", "batch": "batch", "image": "this image"}
ANCHOR_AT = 0.5  # fraction of the colours below the threshold's level on the anchored scale
BELOW_ALPHA = 0.45  # opacity just under the threshold's level on the anchored scale
ABOVE_ALPHA = 0.6  # opacity just above it: the step that shows where the threshold is crossed
TOP_ALPHA = 0.7  # opacity of the hottest colour: even there the defect itself shows through


def overlay_lut() -> np.ndarray:
    """(256, 4) RGBA: the shared colormap, low values transparent, ramping up to ``TOP_ALPHA``."""
    t = np.linspace(0.0, 1.0, 256)
    alpha = np.clip(t / FADE, 0.0, 1.0) * (BELOW_ALPHA + (TOP_ALPHA - BELOW_ALPHA) * t)
    return np.concatenate([lut(), (alpha * 255).astype(np.uint8)[:, None]], axis=1)


def anchored_lut(scale: HeatScale) -> np.ndarray:
    """(256, 4) RGBA over ``scale.lo..scale.hi``: values up to the anchor take the lower
    ``ANCHOR_AT`` of the colormap and stay translucent; values above it take the hot upper part,
    their opacity ramping from ``ABOVE_ALPHA`` to ``TOP_ALPHA`` (never opaque: the defect under the
    hottest colour stays visible)."""
    v = np.linspace(scale.lo, scale.hi, 256)
    a = scale.anchor
    below = v <= a
    t = np.where(below, ANCHOR_AT * (v - scale.lo) / (a - scale.lo),
                 ANCHOR_AT + (1 - ANCHOR_AT) * (v - a) / max(scale.hi - a, 1e-12))
    idx = np.clip(np.round(t * 255), 0, 255).astype(int)
    above = ABOVE_ALPHA + (TOP_ALPHA - ABOVE_ALPHA) * np.clip((t - ANCHOR_AT) / (1 - ANCHOR_AT), 0, 1)
    alpha = np.where(below, np.clip(t / ANCHOR_AT, 0, 1) * BELOW_ALPHA, above)
    alpha = np.where(below & (t < FADE * ANCHOR_AT), alpha * t / (FADE * ANCHOR_AT), alpha)
    return np.concatenate([lut()[idx], (alpha * 255).astype(np.uint8)[:, None]], axis=1)


def _display_array(a: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """An extra (map or image) as something ImageItem shows, with its levels."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    finite = a[np.isfinite(a)]
    if a.ndim == 3:
        return np.clip(a, 0.0, 1.0), (0.0, 1.0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return a, (lo, hi if hi > lo else lo + 1.0)


class ImageView(QWidget):
    """Shows one image with its heat map; ``H`` toggles the map, ``+``/``-`` zoom."""

    zoomed = Signal(float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.path: Optional[Path] = None
        self.name_root: Optional[Path] = None  # the open folder: names are shown relative to it
        self.row: Optional[ScanRow] = None
        self.threshold: Optional[Threshold] = None
        self.detector_name = ""
        self.map_range = (0.0, 1.0)
        self.heat_scale: Optional[HeatScale] = None  # anchored at the threshold (None: no threshold)
        self.scale_mode = "threshold"
        self.source = ""  # where the threshold came from, in words
        self.stale = ""  # "" or e.g. "previous run (ocsvm)"
        self._image_shape: Optional[tuple[int, int]] = None
        self._pixels: Optional[np.ndarray] = None  # uint8 grey (H, W) or RGB (H, W, 3) of the shown image
        self._extra_views: dict[str, tuple[pg.ViewBox, pg.ImageItem]] = {}

        self.name_label = QLabel("No image selected")
        self.name_label.setObjectName("imageName")
        self.score_label = QLabel("")
        self.flag_label = QLabel("")
        self.flag_label.setObjectName("flagChip")
        self.flag_label.hide()

        self.graphics = pg.GraphicsLayoutWidget()
        self.layout_ = self.graphics.ci
        self.layout_.setContentsMargins(2, 2, 2, 2)
        self.vb = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item.setLookupTable(overlay_lut())
        self.heat_item.setZValue(1)
        self.outline_item = pg.ImageItem(axisOrder="row-major")  # the ground-truth mask's outline
        self.outline_item.setZValue(2)
        self.outline_item.hide()
        self.vb.addItem(self.image_item)
        self.vb.addItem(self.heat_item)
        self.vb.addItem(self.outline_item)
        self.message = pg.TextItem("", color=MUTED, anchor=(0.5, 0.5))
        self.vb.addItem(self.message, ignoreBounds=True)
        self.colorbar = pg.ColorBarItem(values=self.map_range, colorMap=heat_colormap(), interactive=False,
                                        width=16, label="anomaly (batch scale)", colorMapMenu=False)
        self.colorbar.setToolTip("Heat-map colours in detector units, one scale for the whole batch")
        self.anchor_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#ffffff", width=2), label="threshold",
                                           labelOpts={"position": 0.0, "color": "#ffffff", "anchors": [(1, 1), (1, 1)]})
        self.anchor_line.setZValue(10)
        self.colorbar.addItem(self.anchor_line)
        self.anchor_line.hide()
        self._layout_views([])

        self.heat_check = QCheckBox("Heat map (H)")
        self.heat_check.setChecked(True)
        self.heat_check.toggled.connect(self._heat_toggled)
        self.mask_check = QCheckBox("Ground truth (G)")
        self.mask_check.setChecked(True)
        self.mask_check.setToolTip("Outline of the defect's ground-truth mask, when the folder has one (MVTec AD's "
                                   "ground_truth/, MTD's .png beside each .jpg)")
        self.mask_check.toggled.connect(lambda _on: self._update_outline())
        self.mask_check.hide()
        self._outline: Optional[np.ndarray] = None
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(65)
        self.opacity.setFixedWidth(90)
        self.opacity.setToolTip("Heat-map opacity")
        self.opacity.valueChanged.connect(lambda v: self.heat_item.setOpacity(v / 100.0))
        self.heat_item.setOpacity(0.65)
        self.scale_combo = QComboBox()
        for key, title in SCALES.items():
            self.scale_combo.addItem(title, key)
        self.scale_combo.setToolTip("Heat-map colour scale: anchored at the threshold (everything above it hot), "
                                    "one scale for the batch (as exported), or this image's own range")
        self.scale_combo.currentIndexChanged.connect(lambda _i: self.set_scale_mode(self.scale_combo.currentData()))
        self.readout = QLabel("")
        self.readout.setObjectName("muted")
        self.readout.setToolTip("Under the cursor: pixel position, its grey or RGB value and the heat-map value")
        self.readout.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # never widens the window
        self.zoom_label = QLabel("")
        self.zoom_label.setObjectName("muted")
        self.zoom_label.setToolTip("Screen pixels per image pixel")
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)
        self.vb.sigRangeChanged.connect(lambda *_a: self._update_zoom_label())
        buttons = []
        for text, tip, slot in (("−", "Zoom out (-)", lambda: self.zoom(1 / 1.25)),
                                ("+", "Zoom in (+)", lambda: self.zoom(1.25)),
                                ("1:1", "One image pixel per screen pixel (1)", self.actual_size),
                                ("Fit", "Fit the image in the view (0)", self.fit)):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            buttons.append(b)

        head = QHBoxLayout()
        head.setContentsMargins(8, 4, 8, 2)
        head.addWidget(self.name_label)
        head.addSpacing(12)
        head.addWidget(self.score_label, 1)
        head.addWidget(self.flag_label)
        controls = QHBoxLayout()
        controls.setContentsMargins(8, 2, 8, 4)
        controls.addWidget(self.heat_check)
        controls.addWidget(self.mask_check)
        controls.addSpacing(8)
        controls.addWidget(QLabel("Opacity"))
        controls.addWidget(self.opacity)
        controls.addSpacing(8)
        controls.addWidget(QLabel("Scale"))
        controls.addWidget(self.scale_combo)
        controls.addStretch(1)
        for b in buttons:
            controls.addWidget(b)
        under = QHBoxLayout()  # the pixel readout on a line of its own: it is never squeezed
        under.setContentsMargins(8, 0, 8, 2)
        under.addWidget(self.readout, 1)
        under.addWidget(self.zoom_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(head)
        lay.addWidget(self.graphics, 1)
        lay.addLayout(controls)
        lay.addLayout(under)

    # ------------------------------------------------------------------ layout
    def _layout_views(self, extra_names: list[str]) -> None:
        """Main view, then one linked view per detector side image, then the colour bar."""
        self.layout_.clear()
        self._extra_views = {}
        titled = bool(extra_names)
        if titled:
            self.layout_.addLabel("input", row=0, col=0, color=MUTED)
        self.layout_.addItem(self.vb, row=1, col=0)
        for k, name in enumerate(extra_names, start=1):
            vb = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False)
            item = pg.ImageItem(axisOrder="row-major")
            vb.addItem(item)
            vb.setXLink(self.vb)
            vb.setYLink(self.vb)
            self.layout_.addLabel(name, row=0, col=k, color=MUTED)
            self.layout_.addItem(vb, row=1, col=k)
            self._extra_views[name] = (vb, item)
        self.layout_.addItem(self.colorbar, row=1, col=len(extra_names) + 1)

    # ------------------------------------------------------------------ what is shown
    def show_row(self, path: Optional[Path], row: Optional[ScanRow], threshold: Optional[Threshold],
                 detector: str = "") -> bool:
        """Show ``row`` for ``path``; returns whether the pixels of a newly selected image are
        needed (they follow via :meth:`set_image` once decoded off the UI thread)."""
        new_path = path != self.path
        self.path, self.row, self.threshold, self.detector_name = path, row, threshold, detector
        if new_path:
            self._pixels = None
            self._outline = None
            self._update_outline()
            self.readout.setText("")
            self.image_item.hide()
            self.heat_item.hide()
            self.message.setText("loading…" if path is not None else "")
        extras = sorted(row.extras) if row is not None else []
        if extras != sorted(self._extra_views):
            self._layout_views(extras)
        self._update_labels()
        self._update_heat()
        self._update_extras()
        return new_path and path is not None

    def update_flags(self, threshold: Optional[Threshold], source: Optional[str] = None) -> None:
        self.threshold = threshold
        if source is not None:
            self.source = source
        self._update_labels()

    def set_stale(self, text: str) -> None:
        """Label the score and flag as those of a previous run ("" when current)."""
        self.stale = text
        self._update_labels()

    def set_image(self, path: Path, arr: np.ndarray) -> None:
        """Pixels of ``path`` (uint8 grey or RGB) decoded off the UI thread."""
        if path != self.path:
            return  # the selection moved on
        shape = arr.shape[:2]
        self._pixels = arr
        self.image_item.setImage(arr, autoLevels=False, levels=(0, 255))
        self.image_item.setRect(QRectF(0, 0, shape[1], shape[0]))
        self.image_item.show()
        self.message.setText("")
        if shape != self._image_shape:
            self._image_shape = shape
            self.fit()
        self._update_heat()

    def set_outline(self, path: Path, outline: Optional[np.ndarray]) -> None:
        """The ground-truth outline of ``path`` (bool, image size) or None when it has no mask."""
        if path != self.path:
            return
        self._outline = outline
        self._update_outline()

    def toggle_outline(self) -> None:
        self.mask_check.toggle()

    def _update_outline(self) -> None:
        o = self._outline
        self.mask_check.setVisible(o is not None)
        if o is None or not self.mask_check.isChecked():
            self.outline_item.hide()
            return
        rgba = np.zeros(o.shape + (4,), np.uint8)
        rgba[o] = (0, 229, 255, 255)  # cyan: apart from every colour of the heat map
        self.outline_item.setImage(rgba, autoLevels=False, levels=(0, 255))
        self.outline_item.setRect(QRectF(0, 0, o.shape[1], o.shape[0]))
        self.outline_item.show()

    def set_failed(self, path: Path, reason: str) -> None:
        if path == self.path:
            self.image_item.hide()
            self.heat_item.hide()
            self.message.setText(f"cannot show this image: {reason}")

    def set_map_range(self, lo: float, hi: float) -> None:
        """The batch-wide scale (the one exports use)."""
        self.map_range = (lo, hi)
        self._update_heat()

    def set_heat_scale(self, scale: Optional[HeatScale]) -> None:
        """The threshold-anchored scale of the batch (None when there is no threshold)."""
        self.heat_scale = scale
        self._update_heat()

    def set_scale_mode(self, mode: str) -> None:
        """'threshold', 'batch' or 'image'."""
        if mode not in SCALES:
            raise ValueError(f"unknown heat-map scale {mode!r}")
        self.scale_mode = mode
        i = self.scale_combo.findData(mode)
        if self.scale_combo.currentIndex() != i:
            self.scale_combo.setCurrentIndex(i)
        self._update_heat()

    def current_scale(self) -> tuple[str, HeatScale]:
        """The scale the heat map is drawn on now, and which one it is (an anchored scale falls
        back to the batch's while there is no threshold)."""
        m = self.row.anomaly_map if self.row is not None else None
        if self.scale_mode == "image" and m is not None:
            return "image", image_scale(np.asarray(m, dtype=np.float32))
        if self.scale_mode == "threshold" and self.heat_scale is not None:
            return "threshold", self.heat_scale
        return "batch", HeatScale(*self.map_range)

    def clear(self) -> None:
        self.show_row(None, None, None)
        self.name_label.setText("No image selected")

    # ------------------------------------------------------------------ controls
    def toggle_heat(self) -> None:
        self.heat_check.toggle()

    def _heat_toggled(self, _on: bool) -> None:
        self._update_heat()

    def zoom(self, factor: float) -> None:
        self.vb.scaleBy((1.0 / factor, 1.0 / factor))
        self.zoomed.emit(factor)

    def fit(self) -> None:
        self.vb.autoRange(padding=0.01, items=[self.image_item])

    def zoom_percent(self) -> Optional[float]:
        """Screen pixels per image pixel, in percent (None before the view has a size)."""
        px = self.vb.viewPixelSize()[0]
        return 100.0 / px if px > 0 else None

    def actual_size(self) -> None:
        """1:1: one image pixel per screen pixel, around the centre of the view."""
        w, h = self.vb.width(), self.vb.height()
        if w <= 0 or h <= 0:
            return
        c = self.vb.viewRect().center()
        self.vb.setRange(xRange=(c.x() - w / 2, c.x() + w / 2), yRange=(c.y() - h / 2, c.y() + h / 2), padding=0)

    def _update_zoom_label(self) -> None:
        z = self.zoom_percent()
        self.zoom_label.setText(f"zoom {z:.0f} %" if z is not None and self._pixels is not None else "")

    def readout_at(self, x: float, y: float) -> str:
        """What lies under image coordinates (x, y): position, pixel value, heat-map value."""
        arr = self._pixels
        if arr is None or self.path is None:
            return ""
        h, w = arr.shape[:2]
        ix, iy = int(np.floor(x)), int(np.floor(y))
        if not (0 <= ix < w and 0 <= iy < h):
            return ""
        v = arr[iy, ix]
        text = f"x {ix}  y {iy}  " + (f"grey {int(v)}" if arr.ndim == 2 else f"RGB {int(v[0])},{int(v[1])},{int(v[2])}")
        m = self.row.anomaly_map if self.row is not None else None
        if m is not None:
            mh, mw = m.shape[:2]
            text += f"  map {float(m[min(mh - 1, iy * mh // h), min(mw - 1, ix * mw // w)]):.4g}"
        return text

    def _mouse_moved(self, pos) -> None:
        if not self.vb.sceneBoundingRect().contains(pos):
            self.readout.setText("")
            return
        p = self.vb.mapSceneToView(pos)
        self.readout.setText(self.readout_at(p.x(), p.y()))

    def display_name(self) -> str:
        """The image's name relative to the open folder (the gallery's name: ``MT_Blowhole/Imgs/x.jpg``),
        or ``parent/file`` for an image outside it."""
        root = self.name_root
        if root is not None:
            try:
                return self.path.relative_to(root).as_posix()
            except ValueError:
                pass
        return f"{self.path.parent.name}/{self.path.name}"

    # ------------------------------------------------------------------ internals
    def _update_labels(self) -> None:
        row, thr = self.row, self.threshold
        self.name_label.setText(self.display_name() if self.path else "No image selected")
        self.name_label.setToolTip(str(self.path) if self.path else "")
        if row is None:
            self.score_label.setText("not scored" if self.path else "")
            self.score_label.setToolTip("")
            self.flag_label.hide()
            return
        text = f"score {row.score:.4g}"
        if thr is not None:
            text += f"   threshold (score) {thr.value:.4g}"
        if self.stale:
            text = f"{self.stale}: {text}"
        self.score_label.setText(text)
        self.score_label.setToolTip(f"detector {self.detector_name}\n"
                                    + (f"threshold {thr.value:.6g}, {self.source or thr.describe()}" if thr
                                       else "no threshold"))
        flagged = thr.flags(row.score) if thr is not None else None
        group = row.columns.get("group")
        if group is not None:  # a zero-shot scan: flagged means "in the suspect group"
            flagged = group == "suspect"
            self.score_label.setToolTip(f"detector {self.detector_name}\n{group} group of the zero-shot grouping")
        self.flag_label.setVisible(flagged is not None)
        self.flag_label.setText(("SUSPECT" if flagged else "normal") if group is not None else
                                ("FLAGGED" if flagged else "ok"))
        self.flag_label.setProperty("flagged", bool(flagged))
        color = ACCENT if flagged else "#2f6f4e"
        if self.stale:
            color = MUTED  # a previous run's verdict, not the current one
        self.flag_label.setStyleSheet(f"background:{color}; color:white;")

    def _update_colorbar(self, kind: str, scale: HeatScale) -> None:
        anchored = kind == "threshold"
        colors = anchored_lut(scale) if anchored else overlay_lut()
        rgba = colors.copy()
        rgba[:, 3] = 255  # the bar shows the colours, opaque
        self.colorbar.setColorMap(pg.ColorMap(np.linspace(0.0, 1.0, 256), rgba))
        self.colorbar.setLevels((scale.lo, scale.hi))
        at = f" {self.threshold.value:.4g}" if self.threshold is not None else ""
        label = {"threshold": f"map · line at threshold{at}" if anchored else "",
                 "batch": "anomaly (batch scale)", "image": "anomaly (this image)"}[kind]
        self.colorbar.getAxis("left").setLabel(label)
        if anchored:
            self.anchor_line.setValue(256.0 * (scale.anchor - scale.lo) / (scale.hi - scale.lo))
            self.anchor_line.label.setFormat(f"map {scale.anchor:.3g} at threshold{at}")
            self.anchor_line.show()
            self.colorbar.setToolTip(f"Colours in map units. The line marks map value {scale.anchor:.4g}: the "
                                     f"hottest pixel of an image whose score is exactly the threshold{at}; above "
                                     "it the colours are hot.")
        else:
            self.anchor_line.hide()
            self.colorbar.setToolTip("Heat-map colours in map units, "
                                     + ("one scale for the whole batch (as exported)" if kind == "batch"
                                        else "from this image's lowest value to its 99.9th percentile"))
        self.heat_item.setLookupTable(colors)

    def _update_heat(self) -> None:
        row = self.row
        m = row.anomaly_map if row is not None else None
        kind, scale = self.current_scale()
        self._update_colorbar(kind, scale)
        if m is None or not self.heat_check.isChecked() or not self.image_item.isVisible():
            self.heat_item.hide()
            return
        h, w = row.image_shape if row.image_shape[0] > 0 else m.shape
        self.heat_item.setImage(m.astype(np.float32), autoLevels=False, levels=(scale.lo, scale.hi))
        self.heat_item.setRect(QRectF(0, 0, w, h))
        self.heat_item.show()

    def _update_extras(self) -> None:
        row = self.row
        if row is None:
            return
        h, w = row.image_shape
        for name, (_vb, item) in self._extra_views.items():
            arr, levels = _display_array(row.extras[name])
            item.setImage(arr, autoLevels=False, levels=levels)
            if h > 0:
                item.setRect(QRectF(0, 0, w, h))
