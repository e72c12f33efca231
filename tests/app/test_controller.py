"""The controller, its job tracker, the shown state and the worker functions — without a window."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.controller import Controller
from app.job_tracker import JobTracker
from app.view_state import ViewState
from app.workers import decode_thumbnails, list_folder, to_uint8
from core.engine.jobs import CallableJob
from core.results import ScanResult, ScanRow
from core.results.threshold import Threshold
from core.runtime.cancel import CancelToken, check
from tests.app.conftest import SMALL, SlowGaussian, trained

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctrl(qtbot):
    c = Controller()
    yield c
    c.shutdown()


def wait_idle(qtbot, c: Controller, timeout: int = 20000) -> None:
    qtbot.waitUntil(lambda: not c.busy and not any(c.helper_running(k) for k in ("list", "thumbnails", "range")),
                    timeout=timeout)


def opened(qtbot, c: Controller, folder: Path) -> None:
    with qtbot.waitSignal(c.folder_opened, timeout=10000):
        c.open_folder(folder)
    wait_idle(qtbot, c)


def rows(*scores: float) -> list[ScanRow]:
    return [ScanRow(path=Path(f"/x/{i}.png"), score=s, image_shape=(8, 8), flagged=None) for i, s in enumerate(scores)]


# ------------------------------------------------------------------ worker functions (no Qt)
def test_worker_functions_import_no_qt():
    code = "import sys, app.workers, app.view_state; print(any(m.startswith('PySide6') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_thumbnails_are_decoded_with_reasons_for_bad_files(parts):
    info = list_folder(parts.batch, None)
    got: list = []
    progress: list = []
    n = decode_thumbnails(info.paths, lambda d, t, m: progress.append((d, t)), CancelToken(), got.append)
    assert n == len(info.paths) == parts.n_readable + 1
    bad = [(info.paths[i].name, reason) for i, thumb, reason in got if thumb is None]
    assert bad and bad[0][0] == "zz_corrupt.png" and bad[0][1]
    assert all(t.dtype.name == "uint8" and max(t.shape[:2]) <= 128 for _i, t, _r in got if t is not None)
    assert progress[-1] == (n, n)


def test_thumbnail_decoding_stops_when_cancelled(parts):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Exception, match="ancel"):
        decode_thumbnails(list_folder(parts.batch, None).paths, lambda *a: None, token, lambda _x: None)


def test_list_folder_searches_subfolders_only_when_needed(parts):
    top = list_folder(parts.root, None)  # root holds no image itself: subfolders are searched
    assert top.recursive and len(top.paths) == 12 + parts.n_readable + 1
    flat = list_folder(parts.batch, None)
    assert not flat.recursive and len(flat.paths) == parts.n_readable + 1


def test_to_uint8_keeps_grey_as_two_dimensions():
    import numpy as np

    assert to_uint8(np.full((4, 5, 1), 0.5, np.float32)).shape == (4, 5)
    assert to_uint8(np.ones((4, 5, 3), np.float32))[0, 0, 0] == 255


# ------------------------------------------------------------------ the shown state (plain Python)
def test_view_state_keeps_the_previous_result_until_a_scan_completes():
    s = ViewState()
    first = ScanResult("d", rows(1.0, 5.0), [], Threshold.explicit(3.0))
    first.apply_threshold(first.threshold)
    s.set_result(first)
    s.begin_scan()
    assert s.result is None and s.previous is first and s.rows() == []
    s.add_rows(rows(9.0))
    assert [r.score for r in s.rows()] == [9.0] and s.row_for(Path("/x/0.png")).score == 9.0
    dropped, prev = s.abandon_scan()
    assert dropped == 1 and prev is first and s.result is first and s.row_for(Path("/x/1.png")).flagged


def test_view_state_hand_threshold_reflags_shown_and_live_rows():
    s = ViewState()
    res = ScanResult("d", rows(1.0, 5.0), [], Threshold.explicit(3.0))
    s.set_result(res)
    in_force = s.apply_threshold(Threshold.explicit(0.5))
    assert in_force.value == 0.5 and all(r.flagged for r in res.rows)
    assert s.threshold(Threshold.explicit(99.0)).value == 0.5  # the hand-set one wins
    s.begin_scan()
    s.add_rows(rows(0.1, 0.9))
    assert [r.flagged for r in s.live] == [False, True]
    s.apply_threshold(None, Threshold.explicit(0.05))
    assert [r.flagged for r in s.live] == [True, True] and s.threshold_override is None


# ------------------------------------------------------------------ the job tracker
def test_a_replaced_helper_is_cancelled_and_its_late_result_dropped(qtbot):
    t = JobTracker()
    got: list = []

    def slow(p, c, e):
        for _ in range(100):
            time.sleep(0.01)
            check(c)
        return "old"

    t.submit(CallableJob(slow, title="old"), "image", got.append)
    t.submit(CallableJob(lambda p, c, e: "new", title="new"), "image", got.append)
    # settled: the threads ended and their last signals were delivered (on a busy machine the
    # results can still wait in the event queue when the threads have stopped)
    qtbot.waitUntil(t.runner.settled, timeout=10000)
    assert got == ["new"] and not t.helper_running("image")
    t.shutdown()


def test_main_task_busy_state_and_cancel(qtbot):
    t = JobTracker()
    titles: list = []
    t.busy_changed.connect(titles.append)
    cancelled: list = []

    def slow(p, c, e):
        while True:
            time.sleep(0.01)
            check(c)

    t.submit(CallableJob(slow, title="long"), "fit", lambda _r: None, main=True, on_cancel=lambda: cancelled.append(1))
    assert t.busy and t.busy_title == "long" and t.busy_kind == "fit" and not t.cancel_requested
    assert t.cancel_main() and t.cancel_requested
    qtbot.waitUntil(lambda: not t.busy, timeout=5000)
    assert cancelled == [1] and titles == ["long", ""] and not t.cancel_main()
    t.shutdown()
    assert t.submit(CallableJob(lambda p, c, e: 1, title="late"), "x", lambda _r: None) == 0


# ------------------------------------------------------------------ the controller, driven like the window does
def test_open_train_scan_threshold_and_export_without_a_window(qtbot, ctrl, parts, tmp_path):
    opened(qtbot, ctrl, parts.batch)
    assert ctrl.folder.folder == parts.batch and len(ctrl.source) == parts.n_readable + 1
    assert list(ctrl.skipped) == [parts.batch / "zz_corrupt.png"]
    ctrl.set_good_folder(parts.good)
    ranges: list = []
    ctrl.map_range_changed.connect(lambda lo, hi: ranges.append((lo, hi)))
    with qtbot.waitSignal(ctrl.result_changed, timeout=30000, check_params_cb=lambda r: r is not None):
        assert ctrl.run("pixel-gaussian", SMALL)
    wait_idle(qtbot, ctrl)
    res = ctrl.result
    assert len(res.rows) == parts.n_readable and ctrl.threshold is res.threshold
    assert {r.path.name for r in res.flagged} == {f"bad{i}.png" for i in range(4)}
    assert ranges and ctrl.map_range == ranges[-1] and ranges[-1][1] > ranges[-1][0]
    ctrl.set_threshold(-1.0)
    assert ctrl.threshold.method == "explicit" and all(r.flagged for r in ctrl.rows())
    ctrl.reset_threshold()
    assert ctrl.threshold.method == "calibrated" and len(ctrl.result.flagged) == 4
    with qtbot.waitSignal(ctrl.exported, timeout=10000):
        assert ctrl.export("flagged", tmp_path / "out")
    assert sorted((tmp_path / "out" / "flagged.txt").read_text().split()) == sorted(str(r.path) for r in res.flagged)
    assert ctrl.export_targets("flagged", tmp_path / "out")  # would replace: the window asks first


def test_cancelled_scan_shows_the_previous_result_again(qtbot, ctrl, parts):
    opened(qtbot, ctrl, parts.batch)
    ctrl.set_detector(trained(good=parts.good))
    with qtbot.waitSignal(ctrl.result_changed, timeout=30000, check_params_cb=lambda r: r is not None):
        ctrl.run("pixel-gaussian", SMALL)
    wait_idle(qtbot, ctrl)
    complete = ctrl.result
    ctrl.set_detector(trained(SlowGaussian, parts.good, delay=0.3, batch_size=1))
    with qtbot.waitSignal(ctrl.rows_arrived, timeout=10000):
        assert ctrl.run("pixel-gaussian", {**SMALL, "batch_size": 1})
    assert ctrl.result is None and ctrl.scanning
    assert ctrl.cancel()
    qtbot.waitUntil(lambda: not ctrl.busy, timeout=5000)
    assert ctrl.result is complete


def test_busy_controller_refuses_a_second_main_task(qtbot, ctrl, parts):
    opened(qtbot, ctrl, parts.batch)
    ctrl.set_detector(trained(SlowGaussian, parts.good, delay=0.3, batch_size=1))
    logs: list = []
    ctrl.logged.connect(lambda level, msg: logs.append((level, msg)))
    assert ctrl.run("pixel-gaussian", {**SMALL, "batch_size": 1})
    assert not ctrl.train("pixel-gaussian", SMALL)
    assert logs[-1][0] == "warning" and "Busy" in logs[-1][1]
    ctrl.cancel()
    qtbot.waitUntil(lambda: not ctrl.busy, timeout=5000)


def test_view_state_says_whether_results_are_current_and_where_the_threshold_came_from():
    s = ViewState()
    model, other = object(), object()
    calibrated = Threshold(2.0, "calibrated", fpr=0.05, n_calibration=7)
    assert s.stale(model, running=False) == "" and s.threshold_source(None) == "no threshold"
    res = ScanResult("ocsvm", rows(1.0, 5.0), [], calibrated)
    s.begin_scan()
    s.finish_scan(res, scored_by=model)
    assert s.stale(model, running=False) == ""
    assert s.stale(model, running=True) == "previous run (ocsvm)"  # a new run is under way
    assert s.stale(other, running=False) == "previous run (ocsvm)"  # another model is in memory
    s.model_source = "from the model m"
    assert s.threshold_source(calibrated) == "calibrated at FPR 0.05 on 7 held-out good images, from the model m"
    s.apply_threshold(Threshold.explicit(3.0))
    assert s.threshold_source(calibrated) == "set by hand"
    s.begin_scan()
    assert s.stale(model, running=True) == "previous run (ocsvm)"  # the groups dock still shows it
    s.abandon_scan()
    assert s.result is res and s.stale(model, running=False) == ""
