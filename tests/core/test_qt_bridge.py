"""The QThread bridge: results, failures and cancellation arrive as signals in the GUI thread."""

import threading
import time

import pytest

from core.engine.jobs import CallableJob
from core.engine.qt_bridge import JobRunner
from core.runtime.cancel import check


def slow_job(n=50, delay=0.01, fail_at=None):
    def fn(progress, cancel, emit):
        for i in range(n):
            check(cancel)
            time.sleep(delay)
            if fail_at == i:
                raise ValueError(f"bad thing at step {i}")
            emit(i)
            progress(i + 1, n, "step")
        return threading.get_ident()

    return CallableJob(fn, title="slow")


def test_success_runs_off_the_gui_thread(qtbot):
    runner = JobRunner()
    got, parts, progress = [], [], []
    runner.succeeded.connect(lambda jid, res: got.append((jid, res)))
    runner.emitted.connect(lambda jid, items: parts.extend(items))
    runner.progressed.connect(lambda jid, d, t, m: progress.append((d, t)))
    with qtbot.waitSignal(runner.finished, timeout=10000):
        jid = runner.submit(slow_job(20, 0.01))
    assert got[0][0] == jid and got[0][1] != threading.get_ident()
    assert parts == list(range(20))  # every partial delivered, in order
    assert progress[-1] == (20, 20)
    assert len(progress) < 20  # throttled


def test_failure_is_a_signal_not_a_crash(qtbot):
    runner = JobRunner()
    failures = []
    runner.failed.connect(lambda jid, msg, tb: failures.append(msg))
    with qtbot.waitSignal(runner.finished, timeout=10000):
        runner.submit(slow_job(5, 0.0, fail_at=2))
    assert failures == ["bad thing at step 2"]


def test_cancel_and_shutdown(qtbot):
    runner = JobRunner()
    cancelled, succeeded = [], []
    runner.cancelled.connect(cancelled.append)
    runner.succeeded.connect(lambda *a: succeeded.append(a))
    jid = runner.submit(slow_job(1000, 0.01))
    qtbot.wait(50)
    assert runner.is_running(jid)
    with qtbot.waitSignal(runner.finished, timeout=10000):
        runner.cancel(jid)
    assert cancelled == [jid] and succeeded == []
    jid2 = runner.submit(slow_job(1000, 0.01))
    assert runner.shutdown(10000)
    assert not runner.is_running(jid2)


@pytest.mark.parametrize("n_jobs", [3])
def test_job_ids_are_distinct(qtbot, n_jobs):
    runner = JobRunner()
    done = []
    runner.succeeded.connect(lambda jid, res: done.append(jid))
    ids = [runner.submit(slow_job(3, 0.0)) for _ in range(n_jobs)]
    qtbot.waitUntil(lambda: len(done) == n_jobs, timeout=10000)
    assert sorted(done) == sorted(ids) and len(set(ids)) == n_jobs


def test_a_runner_deleted_before_its_threads_finished_signal_arrives_is_left_alone(qtbot):
    """The threads' ``finished`` reaches the GUI thread through the event queue; a runner deleted
    in between (a test's or a closed window's) must not be called: the slot is bound to the
    runner, so Qt drops the call. Before, a lambda slot raised "Signal source has been deleted"
    in the event loop on a busy machine."""
    import shiboken6

    runner = JobRunner()
    jid = runner.submit(slow_job(1, 0.0))
    thread = runner._threads[jid]
    assert thread.wait(10000)  # run() returned; its finished signal is queued, not delivered
    assert not runner.is_running() and not runner.settled()
    shiboken6.delete(runner)
    qtbot.wait(50)  # the queued call is processed (or dropped) here; an exception would fail the test


def test_settled_waits_for_the_last_signals(qtbot):
    runner = JobRunner()
    got: list = []
    runner.succeeded.connect(lambda jid, r: got.append(r))
    runner.submit(slow_job(1, 0.0))
    qtbot.waitUntil(runner.settled, timeout=10000)
    assert got  # settled implies the result was delivered
