"""Colours shared by every view, and the pyqtgraph settings the views rely on.

One accent colour marks "flagged" everywhere (gallery frame, histogram bars, labels); heat
maps always use the colormap of :mod:`core.io.colormap`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

from core.io.colormap import lut

ACCENT = "#ff5a4f"  # flagged
NORMAL = "#7f9cbf"  # not flagged (histogram bars)
MUTED = "#9aa0a6"  # secondary text
PLOT_BG = "#1b1c1f"
TILE_BG = "#26282c"
SELECTION = "#3d8bfd"


def configure_pyqtgraph() -> None:
    """Row-major images (numpy ``(H, W[, C])`` shown as is) on the dark plot background."""
    pg.setConfigOptions(imageAxisOrder="row-major", background=PLOT_BG, foreground="#d7dadf")


def heat_colormap() -> pg.ColorMap:
    """The shared heat-map colormap as a pyqtgraph ColorMap (for colour bars)."""
    return pg.ColorMap(np.linspace(0.0, 1.0, 256), lut(), name="inferno")


def heat_color(fraction: float) -> QColor:
    """Colour of the shared colormap at ``fraction`` in [0, 1]."""
    i = int(round(min(1.0, max(0.0, fraction)) * 255))
    r, g, b = (int(v) for v in lut()[i])
    return QColor(r, g, b)


def readable_text_on(color: QColor) -> QColor:
    """Black or white, whichever reads better on ``color``."""
    luma = 0.299 * color.red() + 0.587 * color.green() + 0.114 * color.blue()
    return QColor("#111111") if luma > 140 else QColor("#ffffff")


configure_pyqtgraph()
