"""The number boxes of the settings form (:class:`app.panels.ConfigForm`), built from a config
field's metadata: its range (``min`` / ``max``), enough decimals for its default and minimum, and
the words for a 0 that means something else (``zero``: "exact", "off", "as blur sigma")."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox

INT_LIMIT = 2**31 - 1


def decimals(f: dataclasses.Field, default: float) -> int:
    """Enough decimals to show the default and the minimum of a float field."""
    smallest = min((abs(v) for v in (default, f.metadata.get("min", 0.0)) if v), default=1.0)
    return int(min(10, max(3, 2 - math.floor(math.log10(smallest)))))


def number_editor(f: dataclasses.Field, tp: Any, value: Any) -> QSpinBox | QDoubleSpinBox:
    """A spin box for an int (``tp is int``) or float field holding ``value``. Where metadata
    ``zero`` says what 0 means and 0 is the minimum, the box shows those words at 0 (Qt's special
    value text); its value stays 0."""
    md = f.metadata
    if tp is int:
        w = QSpinBox()
        w.setRange(int(md.get("min", -INT_LIMIT)), int(min(md.get("max", INT_LIMIT), INT_LIMIT)))
        w.setValue(int(value))
    else:
        w = QDoubleSpinBox()
        w.setDecimals(decimals(f, float(value)))
        w.setRange(float(md.get("min", -1e12)), float(md.get("max", 1e12)))
        w.setStepType(QDoubleSpinBox.AdaptiveDecimalStepType)
        w.setValue(float(value))
    if md.get("zero") and w.minimum() == 0:
        w.setSpecialValueText(str(md["zero"]))
    return w
