"""Keeping the keyboard and the wheel where the inspector means them.

:func:`guard_inputs` fits every number field (spin box) and choice (combo box) under a widget
with one event filter: the wheel changes such a field only while it has the keyboard focus
(passing over it scrolls the panel instead), and a letter typed into a number field — where it
could never be input — goes to the window's single-key shortcuts (verdicts, views) instead of
being swallowed. Text fields (notes, folders, patterns) keep every key: there a letter is text.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QWidget


class InputGuard(QObject):
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        kind = event.type()
        if kind == QEvent.Wheel and isinstance(obj, QWidget) and not obj.hasFocus():
            event.ignore()  # not handled here: Qt passes it on to the parent (the scroll area)
            return True
        if kind == QEvent.ShortcutOverride and isinstance(obj, QAbstractSpinBox):
            mods = event.modifiers() & ~Qt.ShiftModifier
            if Qt.Key_A <= event.key() <= Qt.Key_Z and mods == Qt.NoModifier:
                event.ignore()  # a letter is no number: let the window's shortcut have it
                return True
        return False


_GUARD = InputGuard()


def guard_inputs(root: QWidget) -> None:
    """Guard every spin box and combo box under ``root`` (and ``root`` itself); idempotent."""
    widgets = [root, *root.findChildren(QAbstractSpinBox), *root.findChildren(QComboBox)]
    for w in widgets:
        if isinstance(w, (QAbstractSpinBox, QComboBox)):
            w.setFocusPolicy(Qt.StrongFocus)  # the wheel alone never gives them the focus
            w.removeEventFilter(_GUARD)
            w.installEventFilter(_GUARD)
