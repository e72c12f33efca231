"""Issue 26, part 1: a model belongs to the folder it was trained for.

The session keeps the model it scored with (beside the session, checksummed, named by its runs)
and the folder's good images; reopening restores both; another folder's model is used only after
a question that names both; changing the good-images field makes Run train.
"""

from __future__ import annotations

import shutil

import pytest
from PySide6.QtWidgets import QMessageBox

from core.io.checkpoint import read_header
from core.session.report import build_report
from tests.app.conftest import make_window, open_folder, scan, set_form, wait_idle


def logged(win, needle: str) -> list[str]:
    return [m for _l, m in win.log_panel.lines if needle in m]


def wait_done(qtbot, win, timeout: int = 30000) -> None:
    qtbot.waitUntil(lambda: not win.controller.busy and win.controller.result is not None, timeout=timeout)
    wait_idle(qtbot, win.controller)


@pytest.fixture
def other(parts, tmp_path):
    """A second inspected folder (a copy of the batch's readable images) with its own good images."""
    folder = tmp_path / "other"
    folder.mkdir()
    for p in sorted(parts.batch.glob("*.png"))[:4]:
        if "corrupt" not in p.name:
            shutil.copy(p, folder / p.name)
    good = tmp_path / "other-good"
    shutil.copytree(parts.good, good)
    return folder, good


def answer(monkeypatch, win, choice, asked: list):
    win.ask_questions = True

    def question(_parent, _title, text, *_a, **_k):
        asked.append(text)
        return choice
    monkeypatch.setattr(QMessageBox, "question", question)


def test_1_the_session_keeps_the_model_and_the_good_folder_across_a_restart(qtbot, settings, parts):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    c = win.controller
    run = c.session.run(c.run_id)
    kept = c.session.model(run.fingerprint)  # the run names the model that scored it
    assert kept is not None and kept.path.parent == c.session.models_dir()
    assert kept.path.parent.parent == c.session.path.parent  # in the app's data folder, beside the session
    assert read_header(kept.path)["weights_sha256"] == kept.weights_sha256
    assert kept.good_folder == parts.good.resolve() and c.session.good_folder() == parts.good
    assert str(kept.path) in build_report(c.session, c.run_id)  # the run's provenance lists it
    win.close()

    win2 = make_window(qtbot, settings)
    win2.set_good_folder("")  # whatever the field said, the folder's own good images come back
    open_folder(qtbot, win2, parts.batch)
    c2 = win2.controller
    qtbot.waitUntil(lambda: c2.result is not None and c2.detector is not None and not c2.busy, timeout=20000)
    wait_idle(qtbot, c2)
    assert win2.detector_panel.good_edit.text() == str(parts.good)
    assert "No model yet" not in win2.detector_panel.model_label.text()
    assert c2.stale == ""
    set_form(win2)
    assert win2.run_detector()
    wait_done(qtbot, win2)
    assert not logged(win2, "Trained ") and logged(win2, f"0 new, {parts.n_readable} reused")


def test_1_another_folders_model_is_used_only_after_a_question_naming_both(qtbot, window, parts, other,
                                                                            monkeypatch):
    folder, _good = other
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    c = window.controller
    open_folder(qtbot, window, folder)
    assert window.detector_panel.good_edit.text() == ""  # the batch's good images are not this folder's
    asked: list[str] = []
    answer(monkeypatch, window, QMessageBox.No, asked)
    assert not window.run_detector()
    assert len(asked) == 1 and str(parts.batch) in asked[0] and str(folder) in asked[0]
    assert str(parts.good.resolve()) in asked[0]
    assert not c.busy and c.result is None
    answer(monkeypatch, window, QMessageBox.Yes, asked)
    assert window.run_detector()
    wait_done(qtbot, window)
    assert len(asked) == 2 and len(c.result.rows) == 4
    run = c.session.run(c.run_id)
    assert c.session.model(run.fingerprint) is not None  # the run is recorded with the model it used
    assert not logged(window, "Trained pixel-gaussian on 12 good images in")[1:]  # trained once, for the batch


def test_1_the_good_images_field_follows_the_folder(qtbot, window, parts, other):
    folder, good = other
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    open_folder(qtbot, window, folder)
    window.set_good_folder(str(good))
    open_folder(qtbot, window, parts.batch)
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=20000)
    assert window.detector_panel.good_edit.text() == str(parts.good)
    open_folder(qtbot, window, folder)
    assert window.detector_panel.good_edit.text() == str(good)


def test_1_changing_the_good_images_makes_the_model_stale_and_run_trains(qtbot, window, parts, other):
    _folder, good = other
    open_folder(qtbot, window, parts.batch)
    scan(qtbot, window, good=parts.good)
    p = window.detector_panel
    assert "trained on" in p.model_label.text()
    window.set_good_folder(str(good))
    assert p.model_label.property("stale") and str(good) in p.model_label.text()
    n = len(logged(window, "Trained "))
    assert window.run_detector()
    wait_done(qtbot, window)
    assert len(logged(window, "Trained ")) == n + 1
    assert window.controller.detector.meta["good_folder"] == str(good.resolve())


def test_the_model_panel_says_what_the_model_is_and_its_self_check(qtbot, settings, parts):
    """Issue 24, part 4: the model panel shows the self-check beside the model (pixel-gaussian
    self-checks by default), and its tooltip what the model is."""
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    det = win.controller.detector
    assert det.meta.get("self_check") is not None
    label = win.detector_panel.model_label
    assert "self-check AUROC" in label.text()
    assert det.describe_model() in label.toolTip() and "synthetic defects" in label.toolTip()
