"""The review workflow in the window (issue #16): the session of a folder, verdict keys and
buttons, the review band and the "to review" walk with its counters, hand moves that outlive a
regroup and a restart, a restart that restores results and threshold, and the prompt before
work that no session keeps is discarded."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.gallery import VerdictRole
from core.session import default_session_path, open_session
from tests.app.conftest import make_window, open_folder, scan, wait_idle
from tests.app.test_grouping_ui import zero_shot_scan


@pytest.fixture
def log_lines(window):
    lines: list[str] = []
    window.controller.logged.connect(lambda level, msg: lines.append(msg))
    return lines


def restart(qtbot, win, settings):
    """Close ``win`` as a user would and start a fresh window on the same settings and data folder."""
    win.close()
    return make_window(qtbot, settings)


def test_scan_goes_into_the_folders_session_incrementally(qtbot, window, parts, log_lines):
    open_folder(qtbot, window, parts.batch)
    c = window.controller
    assert c.session is not None and c.session.path == default_session_path(parts.batch)
    assert not c.session.read_only and not window.review.banner.isVisible()
    scan(qtbot, window, good=parts.good)
    assert c.run_id is not None and any(f"{parts.n_readable} new, 0 reused" in m for m in log_lines)
    assert window.review_counters().startswith("reviewed 0 / ")
    assert window.run_detector()  # the same model again: nothing new to score
    qtbot.waitUntil(lambda: not c.busy and c.result is not None, timeout=30000)
    wait_idle(qtbot, c)
    assert any(f"0 new, {parts.n_readable} reused" in m for m in log_lines)
    assert len(c.session.runs()) == 2 and len(c.result.rows) == parts.n_readable


def test_verdict_keys_buttons_and_disagreement_mark(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, g = window.controller, window.gallery
    flagged = next(r for r in c.result.rows if r.flagged)
    normal = next(r for r in c.result.rows if not r.flagged)
    g.select_path(flagged.path)
    g.view.setFocus()
    qtbot.keyClick(g.view, Qt.Key_D)  # NG on a flagged image: agrees
    assert c.verdict(flagged.path) == "ng" and c.session.verdicts()[flagged.path].value == "ng"
    assert window.review.buttons["ng"].isChecked() and "(D)" in window.review.buttons["ng"].text()
    g.select_path(normal.path)
    qtbot.keyClick(g.view, Qt.Key_U)
    assert c.verdict(normal.path) == "unsure"
    qtbot.keyClick(g.view, Qt.Key_D)  # NG on an image the detector passed: disagrees
    idx = g.model.index(g.model.row_of(normal.path))
    assert idx.data(VerdictRole) == "ng" and "disagrees with the detector" in idx.data(Qt.ToolTipRole)
    assert window.review_counters().endswith("1 disagree")
    qtbot.keyClick(g.view, Qt.Key_C)  # clear
    assert c.verdict(normal.path) is None and normal.path not in c.session.verdicts()
    window.review.buttons["ok"].click()  # the button in the image view's bar
    assert c.verdict(normal.path) == "ok"
    window.review.note.setText("scratch near the rim")
    window.review.note.editingFinished.emit()
    assert c.session.notes()[normal.path].value == "scratch near the rim"
    dlg = window.show_shortcuts()
    text = dlg.findChild(type(window.review.counters), "shortcutsTable").text()
    assert "verdict OK" in text and "<b>A</b>" in text and "<b>D</b>" in text and "<b>U</b>" in text


def test_review_band_filter_and_counters(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, g = window.controller, window.gallery
    scores = sorted(r.score for r in c.result.rows)
    thr = c.threshold.value
    # a band around the threshold wide enough to hold some unflagged images too
    low = scores[0] + (scores[1] - scores[0]) / 2
    window.review.low.setValue(low)
    window.review.high.setValue(max(thr, scores[-1]))
    window.review.band_button.click()
    assert c.band is not None and c.session.review_band(c.run_id) is not None
    assert window.histogram.band.isVisible()
    expected = [r.path for r in sorted(c.result.rows, key=lambda r: -r.score)
                if r.flagged or c.band.zone(r.score) == "review"]
    assert len(expected) == parts.n_readable - 1  # all but the lowest score
    qtbot.keyClick(g.view, Qt.Key_R)  # the "to review" walk
    assert g.review_check.isChecked() and g.visible_paths() == expected
    assert window.review_counters() == f"reviewed 0 / {len(expected)}, 0 disagree"
    first = g.current_path()
    assert first == expected[0]
    qtbot.keyClick(g.view, Qt.Key_A)  # OK on the top score (flagged): disagrees, and leaves the queue
    assert g.visible_paths() == expected[1:]
    assert g.current_path() == expected[1]  # the walk goes on with the next one
    assert window.review_counters() == f"reviewed 1 / {len(expected)}, 1 disagree"
    # dragging the band on the histogram is the same decision
    h = window.histogram
    h.band.setRegion([h._to_axis(scores[-2]), h._to_axis(scores[-1])])
    h.band.sigRegionChangeFinished.emit(h.band)
    assert c.band.low == pytest.approx(scores[-2]) and c.band.high == pytest.approx(scores[-1])


def test_restart_restores_results_threshold_verdicts_and_view(qtbot, settings, parts, log_lines, window):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    rows = {str(r.path): r.score for r in c.result.rows}
    scores = sorted(rows.values())
    hand = (scores[3] + scores[4]) / 2
    c.set_threshold(hand)
    top = max(c.result.rows, key=lambda r: r.score).path
    window.gallery.set_sort_by_score(True)
    window.gallery.select_path(top)
    window.set_verdict("ng")
    c.set_note(top, "dent")
    win2 = restart(qtbot, window, settings)
    win2.detector_panel.form.set_value("image_size", 64)  # the panel moved on since
    win2.select_detector("ldm-zero-shot")
    open_folder(qtbot, win2, parts.batch)
    qtbot.waitUntil(lambda: win2.controller.result is not None, timeout=15000)
    wait_idle(qtbot, win2.controller)
    c2 = win2.controller
    assert {str(r.path): r.score for r in c2.result.rows} == rows
    assert c2.threshold.value == pytest.approx(hand) and c2.threshold_source == "set by hand"
    assert sum(bool(r.flagged) for r in c2.result.rows) == 4
    assert win2.histogram.threshold.value == pytest.approx(hand)
    assert c2.verdict(top) == "ng" and c2.note(top) == "dent"
    assert win2.gallery.sort_combo.currentIndex() == 1 and win2.gallery.current_path() == top
    assert win2.review.buttons["ng"].isChecked() and win2.review.note.text() == "dent"
    assert c2.stale == "" and c2.run_id is not None
    assert win2.detector_panel.current_name() == "pixel-gaussian"  # the run's detector and settings
    assert win2.detector_panel.overrides().get("image_size") == 32
    # the heat maps follow off the UI thread; the one on screen comes with its image
    qtbot.waitUntil(lambda: win2.image_view.heat_item.isVisible(), timeout=10000)
    assert c2.row_for(top).anomaly_map is not None
    qtbot.waitUntil(lambda: all(r.anomaly_map is not None for r in c2.result.rows), timeout=10000)


def test_hand_move_survives_regroup_and_restart(qtbot, settings, parts, window):
    res = zero_shot_scan(qtbot, window, parts.batch)
    c = window.controller
    path = res.rows[0].path
    before = res.rows[0].columns["group"]
    after = "normal" if before == "suspect" else "suspect"
    assert c.move_to_group(path)
    assert c.session.group_moves()[path].value == after
    assert c.regroup("kmeans")
    assert c.result.rows[0].columns["group"] == after  # laid over the new grouping
    assert c.regroup("ncut")
    assert c.result.rows[0].columns["group"] == after
    win2 = restart(qtbot, window, settings)
    open_folder(qtbot, win2, parts.batch)
    qtbot.waitUntil(lambda: win2.controller.result is not None, timeout=15000)
    wait_idle(qtbot, win2.controller)
    row = win2.controller.row_for(path)
    assert row.columns["group"] == after and row.flagged == (after == "suspect")


def test_discarding_unkept_results_asks_first(qtbot, window, parts, monkeypatch, tmp_path):
    window.ask_before_discarding = True
    c = window.controller
    c.use_sessions = False  # results that no session keeps
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    assert "no session is open" in c.unsaved()
    asked: list[str] = []

    def answer(choice):
        def question(_parent, title, text, *_a, **_k):
            asked.append(text)
            return choice
        return question

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Cancel))
    window.open_folder(str(other))
    wait_idle(qtbot, c)
    assert len(asked) == 1 and "would be lost" in asked[0]
    assert c.folder.folder == parts.batch and c.result is not None  # kept
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Discard))
    with qtbot.waitSignal(c.folder_opened, timeout=10000):
        window.open_folder(str(other))
    assert len(asked) == 2 and c.result is None
    # a folder whose results are in its session is left without a question
    c.use_sessions = True
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    assert c.unsaved() == ""
    open_folder(qtbot, window, other)
    assert len(asked) == 2


def test_locked_session_opens_read_only_with_a_banner(qtbot, window, parts):
    holder = open_session(default_session_path(parts.batch), folder=parts.batch)  # "another process" writes it
    try:
        open_folder(qtbot, window, parts.batch)
        c = window.controller
        assert c.session.read_only and window.review.banner.isVisible()
        assert "open for writing by" in window.review.banner.text()
        scan(qtbot, window, good=parts.good)
        assert c.run_id is None and "read-only" in c.unsaved()
        window.gallery.select_path(c.result.rows[0].path)
        assert not window.set_verdict("ok") and c.verdict(c.result.rows[0].path) is None
    finally:
        holder.close()


def test_session_file_save_as_reopen_and_report(qtbot, window, parts, tmp_path):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    top = max(c.result.rows, key=lambda r: r.score).path
    c.set_verdict(top, "ng")
    copy = tmp_path / "desk" / "review.db"
    assert window.save_session_as(str(copy))
    assert c.session.path == copy and c.session.verdicts()[top].value == "ng"
    c.set_note(top, "kept in the copy")
    assert window.export_report(str(tmp_path / "r.html"))
    qtbot.waitUntil(lambda: not c.busy, timeout=30000)
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "kept in the copy" in html and "<svg" in html
    # the copy opens as a session file, with its folder
    other = tmp_path / "other"
    other.mkdir()
    open_folder(qtbot, window, other)
    assert window.open_session_file(str(copy))
    qtbot.waitUntil(lambda: c.result is not None and c.session is not None and c.session.path == copy, timeout=15000)
    wait_idle(qtbot, c)
    assert c.folder.folder == parts.batch and c.verdict(top) == "ng" and c.note(top) == "kept in the copy"


def test_this_one_is_normal_recalibrates(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    before = c.threshold.value
    top = max(c.result.rows, key=lambda r: r.score)
    window.gallery.select_path(top.path)
    assert window.mark_normal()
    assert c.session.good_set() == [top.path]
    assert c.threshold.value > before and c.threshold.method == "calibrated"
    assert "marked normal" in c.threshold_source
    assert c.session.threshold_value(c.run_id) == pytest.approx(c.threshold.value)


def test_roc_from_verdicts_suggests_a_threshold_for_a_recall(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    dlg = window.show_curves()
    assert not dlg.apply_button.isEnabled() and "No OK / NG verdicts" in dlg.info.text()
    rows = sorted(c.result.rows, key=lambda r: r.score)
    c.set_verdict(rows[0].path, "ok")
    c.set_verdict(rows[1].path, "ng")  # a low-scoring image the inspector calls defective
    c.set_verdict(rows[-1].path, "ng")
    dlg.recall.setValue(1.0)
    assert dlg.apply_button.isEnabled() and "2 NG, 1 OK" in dlg.info.text()
    want = (rows[0].score + rows[1].score) / 2  # catches both NG images, not the OK one
    assert dlg.suggestion.threshold == pytest.approx(want) and dlg.suggestion.fpr == 0.0
    assert len(dlg.roc_curve.getData()[0]) == 4  # (0, 0) and one point per score
    dlg.apply_button.click()
    assert c.threshold.value == pytest.approx(want) and c.threshold_source == "set from the verdict ROC at recall 1"
    assert c.session.threshold_value(c.run_id) == pytest.approx(want)


def test_a_restored_run_does_not_lend_its_provenance_to_the_next_scan(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    assert c.threshold_source.endswith("trained now")
    other = parts.root / "other"
    other.mkdir()
    open_folder(qtbot, window, other)
    open_folder(qtbot, window, parts.batch)  # restores run 1
    qtbot.waitUntil(lambda: c.result is not None, timeout=15000)
    wait_idle(qtbot, c)
    assert "session run 1" in c.threshold_source
    assert window.run_detector()  # the model in memory scores again (all reused)
    qtbot.waitUntil(lambda: not c.busy and c.run_id == 2, timeout=30000)
    wait_idle(qtbot, c)
    assert c.threshold_source.endswith("trained now")


def test_typing_a_note_does_not_trigger_verdict_keys(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c, g = window.controller, window.gallery
    path = g.current_path()
    qtbot.keyClick(g.view, Qt.Key_D)
    qtbot.keyClick(window, Qt.Key_E, Qt.ControlModifier)  # to the note field
    assert window.review.note.hasFocus()
    qtbot.keyClicks(window.review.note, "cad")  # C, A and D are verdict keys elsewhere
    qtbot.keyClick(window.review.note, Qt.Key_Return)
    assert c.verdict(path) == "ng" and c.note(path) == "cad"


def test_starting_the_app_offers_the_last_session(qtbot, settings, parts, window, monkeypatch):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    window.close()
    asked: list[str] = []
    monkeypatch.setattr(QMessageBox, "question", lambda _p, _t, text, *a, **k: asked.append(text) or QMessageBox.Yes)
    win2 = make_window(qtbot, settings)
    assert win2.offer_last_session()
    qtbot.waitUntil(lambda: win2.controller.result is not None, timeout=15000)
    wait_idle(qtbot, win2.controller)
    assert str(parts.batch) in asked[0] and win2.controller.folder.folder == parts.batch
    assert len(win2.controller.result.rows) == parts.n_readable
