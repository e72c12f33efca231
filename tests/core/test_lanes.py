"""Scoring lanes (core/runtime/lanes.py, Detector.score): two batches at once on the CPU, results
in order and the same as one at a time, torch's thread count put back, errors and cancels
stopping every lane, a forked child with lanes of its own. Tiny, on the CPU; no timing."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
import torch

from core.detectors.base import Detector
from core.detectors.config import DetectorConfig
from core.detectors.patchcore import PatchCoreConfig, PatchCoreDetector
from core.results import ScoreResult
from core.runtime import lanes as lanes_mod
from core.runtime.cancel import Cancelled, CancelToken
from core.runtime.lanes import LANES_ENV, lane_pool, score_lanes
from tests.conftest import make_part

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class Recorder(Detector):
    """Scores an image by its mean; remembers which thread scored which batch."""

    name = "lanes-recorder"
    title = summary = "test"
    concurrent_batches = True

    def __init__(self, meet: int = 0, fail_at: int | None = None, cancel_at: int | None = None, **kw) -> None:
        super().__init__(DetectorConfig(batch_size=2), device="cpu")
        self.fitted = True
        self.threads: dict[int, int] = {}  # first image's value -> thread
        self.finished: list[int] = []
        # the first ``meet`` batches wait for each other: one at a time they never would
        self.barrier = threading.Barrier(meet, timeout=20) if meet else None
        self.fail_at, self.cancel_at, self.token = fail_at, cancel_at, kw.get("token")

    def _fit(self, images, progress, cancel, skipped) -> None:  # pragma: no cover - never trained
        pass

    def _state(self):  # pragma: no cover - never saved
        return {}

    def _restore(self, tensors, meta) -> None:  # pragma: no cover - never loaded
        pass

    def _score_batch(self, images):
        first = int(images[0][0, 0, 0])
        self.threads[first] = threading.get_ident()
        if self.barrier is not None and first < 2 * self.barrier.parties:
            self.barrier.wait()
        if first == self.fail_at:
            raise RuntimeError("batch failed")
        if first == self.cancel_at:
            self.token.cancel()
        self._step()  # raises Cancelled once the token is cancelled
        self.finished.append(first)
        return [ScoreResult(score=float(img.mean())) for img in images]


def images(n):
    return [np.full((4, 4, 3), i, dtype=np.float32) for i in range(n)]


def test_how_many_lanes():
    assert score_lanes(CPU, 5, {}) == min(2, torch.get_num_threads())
    assert score_lanes(CPU, 1, {}) == 1  # one batch: nothing to overlap
    assert score_lanes(torch.device("cuda"), 5, {}) == 1
    assert score_lanes(CPU, 5, {LANES_ENV: "1"}) == 1
    assert score_lanes(CPU, 5, {LANES_ENV: "64"}) == min(5, torch.get_num_threads())  # never more than the cores
    assert score_lanes(CPU, 5, {LANES_ENV: "0"}) == 1
    with pytest.raises(ValueError, match=LANES_ENV):
        score_lanes(CPU, 5, {LANES_ENV: "two"})


def test_two_lanes_score_two_batches_at_once_in_order(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    det = Recorder(meet=2)  # the first two batches each wait for the other: two lanes or a timeout
    seen, progressed = [], []
    out = det.score(images(9), progress=lambda *a: progressed.append(threading.get_ident()),
                    on_result=lambda i, r: seen.append(i))
    assert seen == list(range(9)) and [out[i].score for i in range(9)] == [float(i) for i in range(9)]
    assert det.threads[0] != det.threads[2]  # scored on two threads at once (the barrier)
    assert set(progressed) == {threading.get_ident()}  # progress only from the caller, in order
    assert torch.get_num_threads() == 2  # split between the lanes while scoring, put back after
    assert det.images_per_call() == 4


def test_one_lane_scores_on_the_callers_thread(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "1")
    det = Recorder()
    out = det.score(images(7))
    assert [out[i].score for i in range(7)] == [float(i) for i in range(7)]
    assert set(det.threads.values()) == {threading.get_ident()}
    assert det.images_per_call() == 2


def test_torch_threads_are_divided_while_scoring_and_put_back(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    counts = []

    class Counting(Recorder):
        def _score_batch(self, images):
            counts.append(torch.get_num_threads())
            return super()._score_batch(images)

    Counting().score(images(6))
    assert counts == [1, 1, 1] and torch.get_num_threads() == 2


def test_an_error_in_a_lane_stops_the_scoring_and_no_lane_runs_on(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    det = Recorder(fail_at=2)
    with pytest.raises(RuntimeError, match="batch failed"):
        det.score(images(20))
    assert 2 not in det.finished and max(det.finished) <= 4  # at most the batch beside the failed one
    assert lanes_mod._LANES.users == 0 and torch.get_num_threads() == 2


def test_cancel_in_a_lane_stops_every_lane(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    token = CancelToken()
    det = Recorder(cancel_at=4, token=token)
    with pytest.raises(Cancelled):
        det.score(images(30), cancel=token)
    assert max(det.finished) <= 6 and 4 not in det.finished
    assert torch.get_num_threads() == 2


def test_two_callers_scoring_at_once_each_keep_their_thread_count(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    start, after = threading.Barrier(2, timeout=20), {}

    def caller(name):
        torch.set_num_threads(2)  # this thread's own count (OpenMP keeps one a thread)
        start.wait()
        Recorder().score(images(12))
        after[name] = torch.get_num_threads()

    threads = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert after == {"a": 2, "b": 2} and torch.get_num_threads() == 2  # before: the first to finish kept 1


def test_a_scoring_started_on_a_lane_gets_no_lanes_and_does_not_deadlock(monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # two threads a lane: an inner scoring would ask for two lanes again
    inner_lanes, done = [], threading.Event()

    class Nesting(Recorder):
        def _score_batch(self, images):
            inner_lanes.append(score_lanes(CPU, 5))
            Recorder().score([img for img in images for _ in range(3)])  # several batches inside a lane
            return super()._score_batch(images)

    def run():
        Nesting().score(images(8))
        done.set()

    try:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(60)
        assert done.is_set()  # before: both lane threads waited on their own pool
        assert inner_lanes and set(inner_lanes) == {1}
    finally:
        torch.set_num_threads(before)


def _child(queue):
    with lane_pool(2) as pool:
        queue.put(pool.submit(lambda: 7).result(timeout=30))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_gets_lane_threads_of_its_own(two_threads):
    with lane_pool(2) as pool:
        pool.submit(lambda: None).result()  # the parent's lane threads exist
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and queue.get(timeout=5) == 7  # the parent's pool would have hung


def test_patchcore_scores_the_same_on_two_lanes_as_on_one(two_threads, monkeypatch):
    rng = np.random.default_rng(0)
    train = [make_part(rng, size=32) for _ in range(6)]
    test = [make_part(rng, size=32, defect=k % 2 == 1) for k in range(10)]
    det = PatchCoreDetector(PatchCoreConfig(backbone="tiny-random", image_size=32, batch_size=2, coreset_ratio=0.5,
                                            blur_sigma=1.0), device="cpu")
    det.fit(train)
    monkeypatch.setenv(LANES_ENV, "1")
    one = det.score(test)
    monkeypatch.setenv(LANES_ENV, "2")
    two = det.score(test)
    assert lanes_mod._LANES.users == 0
    for i in range(len(test)):  # the same to the last bit
        assert two[i].score == one[i].score and np.array_equal(two[i].anomaly_map, one[i].anomaly_map)


def test_a_caller_that_raises_midway_leaves_no_lane_running(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    det = Recorder()

    def stop(i, _res):
        if i == 3:
            raise KeyError("caller gave up")

    with pytest.raises(KeyError) as caught:
        det.score(images(20), on_result=stop)
    assert caught.value is not None and lanes_mod._LANES.users == 0  # the lanes let go before score() raised
    assert max(det.finished) <= 6 and torch.get_num_threads() == 2


def test_patchcore_cancelled_mid_score_on_two_lanes(two_threads, monkeypatch):
    rng = np.random.default_rng(1)
    det = PatchCoreDetector(PatchCoreConfig(backbone="tiny-random", image_size=32, batch_size=2, coreset_ratio=0.5,
                                            blur_sigma=1.0), device="cpu")
    det.fit([make_part(rng, size=32) for _ in range(6)])
    monkeypatch.setenv(LANES_ENV, "2")
    token, seen = CancelToken(), []

    def press(i, _res):
        seen.append(i)
        token.cancel()

    with pytest.raises(Cancelled):
        det.score([make_part(rng, size=32) for _ in range(12)], cancel=token, on_result=press)
    assert seen == [0, 1] and lanes_mod._LANES.users == 0 and torch.get_num_threads() == 2  # the first batch only, as on one lane
    assert det.score([make_part(rng, size=32) for _ in range(4)]).keys() == {0, 1, 2, 3}  # scores again after


def test_a_lane_changes_only_its_own_thread_count(two_threads, monkeypatch):
    monkeypatch.setenv(LANES_ENV, "2")
    seen = []

    class Probing(Recorder):
        def _score_batch(self, images):
            fresh = []
            t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
            t.start()
            t.join()
            seen.append((torch.get_num_threads(), fresh[0]))
            return super()._score_batch(images)

    Probing().score(images(6))
    if lanes_mod._openmp() is None:
        pytest.skip("torch's OpenMP runtime not found: lanes fall back to torch.set_num_threads")
    assert seen == [(1, 2)] * 3  # the lane on 1; a thread that starts using torch meanwhile on the process's 2
