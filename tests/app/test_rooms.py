"""Issue 26, part 6: the controller's plain-Python rooms, each tested without a window (no Qt).

ModelState (what the model in memory belongs to and what Run does), ThresholdKeeper (which
threshold is in force and what the session records), SessionState and ReviewState (the session
and the inspector's decisions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.model_state import ModelState
from app.review_state import ReviewState
from app.session_state import SessionState, read_run
from app.threshold_keeper import ThresholdKeeper
from app.view_state import ViewState
from core.data.images import ImageSource
from core.engine.session_model import scan_keeping_model
from core.session import default_session_path
from tests.app.conftest import SMALL, trained

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("app.view_state", "app.model_state", "app.session_state", "app.review_state", "app.threshold_keeper")


def test_the_rooms_import_no_qt():
    code = f"import sys; import {', '.join(ROOMS)}; print(any(m.startswith('PySide6') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_model_state_plans_run_by_folder_and_good_images(parts, tmp_path):
    m = ModelState()
    assert m.plan("pixel-gaussian", SMALL, 0.01, parts.batch, parts.good, "") == "train"  # no model
    det = trained(good=parts.good)
    m.bind(det, parts.batch, parts.good)
    assert m.plan("pixel-gaussian", SMALL, 0.01, parts.batch, parts.good, "") == "scan"
    assert m.plan("pixel-gaussian", {**SMALL, "blur_sigma": 2.0}, 0.01, parts.batch, parts.good, "") == "train"
    other = tmp_path / "good2"
    assert m.plan("pixel-gaussian", SMALL, 0.01, parts.batch, other, "") == "train"  # the good images changed
    assert m.plan("pixel-gaussian", SMALL, 0.01, parts.batch, other, "not found") == "blocked"
    assert m.plan("pixel-gaussian", SMALL, 0.01, parts.batch, None, "") == "ask"  # none chosen: ask first
    assert m.plan("pixel-gaussian", SMALL, 0.01, tmp_path, parts.good, "") == "ask"  # another folder's model
    q = m.question(tmp_path, None)
    assert str(parts.batch) in q and str(tmp_path) in q and "no good images are chosen" in q


@pytest.fixture
def rooms(parts):
    log: list[tuple[str, str]] = []
    sessions = SessionState(lambda level, msg: log.append((level, msg)))
    review = ReviewState(sessions, sessions.log)
    state, models = ViewState(), ModelState()
    answers: list[bool] = []
    keeper = ThresholdKeeper(state, models, sessions, review, lambda _t, _q: answers.pop(0), sessions.log)
    s = sessions.open_for(parts.batch)
    review.load(s)
    review.root = parts.batch
    yield sessions, review, state, models, keeper, answers, log
    sessions.close()


def scanned(sessions, state, models, parts):
    det = trained(good=parts.good)
    models.bind(det, parts.batch, parts.good)
    out, kept, why = scan_keeping_model(sessions.session, det, ImageSource.from_folder(parts.batch))
    sessions.run_id = out.run_id
    state.set_result(out.result, det)
    return det, out


def test_threshold_keeper_records_every_threshold_and_asks_before_replacing_a_hand_one(rooms, parts):
    sessions, review, state, models, keeper, answers, _log = rooms
    det, out = scanned(sessions, state, models, parts)
    s, rid = sessions.session, out.run_id
    keeper.set_by_hand(-1.0)
    assert state.hand_threshold.value == -1.0 and s.threshold_value(rid) == -1.0
    assert all(r.flagged for r in state.result.rows)
    answers.append(False)  # "replace the hand-set threshold?" No
    keeper.adopt_model(det, store=True, source="opened")
    assert keeper.in_force.value == -1.0 and s.threshold_value(rid) == -1.0
    answers.append(True)
    keeper.adopt_model(det, store=True, source="opened")
    assert keeper.in_force.value == det.threshold.value == s.threshold_value(rid)
    assert keeper.recalibrate(0.25, busy=False) and det.threshold.fpr == 0.25
    assert s.threshold_value(rid) == det.threshold.value  # the report and the export count with it
    assert not keeper.recalibrate(0.3, busy=True)


def test_review_state_decisions_counts_and_normal_marks(rooms, parts):
    sessions, review, state, models, keeper, _answers, _log = rooms
    det, out = scanned(sessions, state, models, parts)
    rows = sorted(out.result.rows, key=lambda r: r.score)
    assert review.set_verdict(rows[-1].path, "ok") and review.set_note(rows[-1].path, "glare")
    assert review.set_band(rows[1].score, rows[-2].score)
    counts = review.counts(state.rows(), keeper.in_force.value)
    assert counts == sessions.session.review_counts(out.run_id)  # the window's counts are the session's
    assert str(rows[-1].path) in counts.disagreeing
    recorded, moved = keeper.mark_normal(rows[-1].path)
    assert recorded and moved and str(rows[-1].path) in review.normal()
    assert not any(r.flagged for r in state.result.rows if r.path == rows[-1].path)


def test_session_state_restores_the_run_with_its_model_and_threshold(rooms, parts):
    sessions, review, state, models, keeper, _answers, _log = rooms
    det, out = scanned(sessions, state, models, parts)
    keeper.set_by_hand(0.5, "set from the verdict ROC at recall 0.9")
    got = read_run(sessions.session, sessions.session.run(out.run_id))
    assert got.hand.value == 0.5 and got.reason == "set from the verdict ROC at recall 0.9"
    assert got.model is not None and got.model_record.fingerprint == got.run.fingerprint
    assert got.model.threshold.value == det.threshold.value
    assert read_run(sessions.session, got.run, have_fingerprint=got.run.fingerprint).model is None  # already in memory
    assert sessions.unsaved(out.result) == "" and sessions.session.path == default_session_path(parts.batch)
