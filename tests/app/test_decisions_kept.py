"""Issue 26, part 3: the inspector's decisions survive a re-run and a reopen.

A hand threshold is kept (a new model's threshold replaces it only after a question), "this one
is normal" stays visible and in the re-calibration of every later run, each folder's review band
stays with its session (and is never drawn on another folder), a threshold outside the band is a
warning, and the restart offer says what the session holds.
"""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QMessageBox

from app.gallery import NormalRole
from tests.app.conftest import make_window, open_folder, scan, set_form, wait_idle


def wait_done(qtbot, win, timeout: int = 30000) -> None:
    qtbot.waitUntil(lambda: not win.controller.busy and win.controller.result is not None, timeout=timeout)
    wait_idle(qtbot, win.controller)


def answering(monkeypatch, win, choice, asked: list) -> None:
    win.ask_questions = True

    def question(_parent, _title, text, *_a, **_k):
        asked.append(text)
        return choice
    monkeypatch.setattr(QMessageBox, "question", question)


def retrain_and_run(qtbot, win) -> None:
    set_form(win, blur_sigma=1.5)  # other settings: Run trains a new model first
    assert win.run_detector()
    wait_done(qtbot, win)


def test_3_a_new_model_replaces_the_hand_threshold_only_after_a_question(qtbot, window, parts, monkeypatch):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    hand = max(r.score for r in c.result.rows) * 2  # nothing flagged
    c.set_threshold(hand)
    asked: list[str] = []
    answering(monkeypatch, window, QMessageBox.No, asked)
    retrain_and_run(qtbot, window)
    assert len(asked) == 1 and f"{hand:.6g}" in asked[0]
    assert c.threshold.value == pytest.approx(hand) and c.threshold_source == "set by hand"
    assert c.session.threshold_value(c.run_id) == pytest.approx(hand) and not c.result.flagged
    answering(monkeypatch, window, QMessageBox.Yes, asked)
    set_form(window, blur_sigma=2.0)
    assert window.run_detector()
    wait_done(qtbot, window)
    assert len(asked) == 2 and c.threshold.method == "calibrated" and c.threshold.value != pytest.approx(hand)


def test_3_this_one_is_normal_stays_marked_and_in_later_calibrations(qtbot, settings, parts):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    c, m = win.controller, win.gallery.model
    top = max(c.result.rows, key=lambda r: r.score).path
    win.gallery.select_path(top)
    assert win.mark_normal() and not c.row_for(top).flagged
    assert m.index(m.row_of(top)).data(NormalRole)
    retrain_and_run(qtbot, win)  # a new model: its calibration takes the marked image in too
    assert not c.row_for(top).flagged and "marked normal" in c.threshold_source
    assert m.index(m.row_of(top)).data(NormalRole)
    win.close()
    win2 = make_window(qtbot, settings)
    open_folder(qtbot, win2, parts.batch)
    qtbot.waitUntil(lambda: win2.controller.result is not None and not win2.controller.busy, timeout=20000)
    wait_idle(qtbot, win2.controller)
    m2 = win2.gallery.model
    assert not win2.controller.row_for(top).flagged and m2.index(m2.row_of(top)).data(NormalRole)


def test_3_the_review_band_stays_with_its_folder_through_rerun_and_reopen(qtbot, settings, parts, tmp_path):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    c = win.controller
    scores = sorted(r.score for r in c.result.rows)
    low, high = scores[1], scores[-2]
    assert c.set_review_band(low, high)
    assert win.run_detector()  # the same model again: a new run of the session
    qtbot.waitUntil(lambda: not c.busy and c.run_id == 2, timeout=30000)
    wait_idle(qtbot, c)
    # another folder of the same images (no runs yet): no band of the batch is drawn there
    other = tmp_path / "other"
    other.mkdir()
    for p in parts.batch.glob("ok*.png"):
        (other / p.name).write_bytes(p.read_bytes())
    open_folder(qtbot, win, other)
    assert c.band is None and not win.histogram.band.isVisible()
    scan(qtbot, win, good=parts.good)
    assert c.band is None and not win.histogram.band.isVisible()
    win.close()
    win2 = make_window(qtbot, settings)
    open_folder(qtbot, win2, parts.batch)
    c2 = win2.controller
    qtbot.waitUntil(lambda: c2.result is not None and not c2.busy, timeout=20000)
    wait_idle(qtbot, c2)
    assert c2.band is not None and (c2.band.low, c2.band.high) == pytest.approx((low, high))
    assert win2.histogram.band.isVisible()
    assert (win2.review.low.value(), win2.review.high.value()) == pytest.approx((low, high), abs=1e-4)


def test_3_a_threshold_outside_the_band_is_a_warning(qtbot, window, parts):
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    scores = sorted(r.score for r in c.result.rows)
    assert c.set_review_band(scores[2], scores[-2])
    assert not window.review.band_warning.isVisibleTo(window)
    c.set_threshold(scores[0] - 1.0)  # below the band: images the band passes are flagged
    assert window.review.band_warning.isVisibleTo(window)
    assert "below the review band" in window.review.band_warning.text()
    c.set_threshold((scores[2] + scores[-2]) / 2)
    assert not window.review.band_warning.isVisibleTo(window)


def test_3_the_restart_offer_says_what_the_session_holds(qtbot, settings, parts, monkeypatch):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    c = win.controller
    rows = sorted(c.result.rows, key=lambda r: r.score)
    c.set_verdict(rows[-1].path, "ng")
    c.set_verdict(rows[0].path, "ok")
    c.set_note(rows[-1].path, "dent")
    assert c.set_review_band(rows[1].score, rows[-2].score)
    win.close()
    asked: list[str] = []
    monkeypatch.setattr(QMessageBox, "question", lambda _p, _t, text, *a, **k: asked.append(text) or QMessageBox.No)
    win2 = make_window(qtbot, settings)
    assert not win2.offer_last_session()
    text = asked[0]
    assert str(parts.batch) in text and "run 1" in text and "pixel-gaussian" in text
    assert f"{parts.n_readable} images" in text and "2 verdicts" in text and "1 note" in text
    assert "review band" in text and "model" in text
