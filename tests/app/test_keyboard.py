"""Issue 26, part 4: the keyboard workflow never types into the wrong place.

Verdict and view keys work whenever no text field is being edited; Enter in the note saves it
(visibly) and gives the keys back to the gallery; the wheel never changes a field it merely
passes over; a target FPR applies on Enter / focus-out, and 0 is refused.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from tests.app.conftest import open_folder, scan, set_form, wait_idle


def focused():
    return QApplication.focusWidget()


def wheel(widget, steps: int = -3) -> None:
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    ev = QWheelEvent(centre, widget.mapToGlobal(centre), QPoint(), QPoint(0, 120 * steps), Qt.NoButton,
                     Qt.NoModifier, Qt.NoScrollPhase, False)
    QApplication.sendEvent(widget, ev)


def test_4_after_run_from_a_settings_field_the_keys_reach_the_gallery(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    window.set_good_folder(str(parts.good))
    set_form(window)
    batch = window.detector_panel.form._editors["batch_size"][0]
    batch.setFocus()
    assert batch.hasFocus()
    qtbot.keyClick(batch, Qt.Key_R, Qt.ControlModifier)  # Ctrl+R from the field just edited
    c = window.controller
    qtbot.waitUntil(lambda: c.result is not None and not c.busy, timeout=30000)
    wait_idle(qtbot, c)
    path = window.gallery.current_path()
    qtbot.keyClick(focused(), Qt.Key_D)
    assert c.verdict(path) == "ng"
    outline = window.image_view.mask_check.isChecked()
    batch.setFocus()  # even in a number field, a letter is a key of the window
    qtbot.keyClick(batch, Qt.Key_G)
    assert window.image_view.mask_check.isChecked() != outline
    qtbot.keyClick(batch, Qt.Key_U)
    assert c.verdict(path) == "unsure" and batch.value() == 4


def test_4_enter_in_the_note_saves_it_visibly_and_gives_the_keys_back(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, path = window.controller, window.gallery.current_path()
    qtbot.keyClick(window.gallery.view, Qt.Key_E, Qt.ControlModifier)
    assert window.review.note.hasFocus()
    qtbot.keyClicks(window.review.note, "dent")
    qtbot.keyClick(window.review.note, Qt.Key_Return)
    assert c.note(path) == "dent" and "saved" in window.review.note_status.text()
    assert window.review.note_status.isVisibleTo(window)
    assert window.gallery.view.hasFocus()
    qtbot.keyClick(focused(), Qt.Key_U)  # a verdict key now, not a letter of the note
    assert c.verdict(path) == "unsure" and c.note(path) == "dent" and window.review.note.text() == "dent"


def test_4_the_wheel_never_changes_a_field_it_passes_over(qtbot, window):
    p = window.detector_panel
    window.gallery.view.setFocus()
    before = p.fpr()
    wheel(p.fpr_spin)
    assert p.fpr() == before
    spin = p.form._editors["batch_size"][0]
    value = spin.value()
    wheel(spin)
    assert spin.value() == value
    device = p.device_combo.currentIndex()
    wheel(p.device_combo)
    assert p.device_combo.currentIndex() == device


def test_4_the_target_fpr_applies_on_enter_and_zero_is_refused(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, spin = window.controller, window.detector_panel.fpr_spin
    recalibrated: list = []
    c.threshold_changed.connect(recalibrated.append)
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin, "0.25")
    assert recalibrated == [] and c.detector.threshold.fpr == 0.01  # not on every keystroke
    qtbot.keyClick(spin, Qt.Key_Return)
    assert len(recalibrated) == 1 and c.detector.threshold.fpr == 0.25
    spin.selectAll()
    qtbot.keyClicks(spin, "0")
    qtbot.keyClick(spin, Qt.Key_Return)
    assert c.detector.threshold.fpr == 0.25 and window.detector_panel.fpr() == 0.25
    assert any("refused" in m for _l, m in window.log_panel.lines)
