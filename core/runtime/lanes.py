"""Scoring lanes: two batches scored at once on a CPU, each on its own thread (issue 28).

A scan on a 2-core CPU alternates parts that use both cores well (the network, the bank search)
with parts that use one (resizing a map, the score rule, Python between them), and its threads
wait for each other at every parallel region. Two *lanes* — two batches in flight, each on a
thread of its own with ``cores / 2`` threads for torch and the runtimes — keep both cores busy
instead. Measured on the 2-core EPYC (docs/benchmarks.md, "Two scoring lanes"), with scores
equal to the last bit: bottle OpenVINO bf16 from about 37 to about 41 images/s.

:func:`score_lanes` says how many lanes a scoring call gets: 1 on a GPU, for one batch, or with
``ANOMALY_INSPECTOR_LANES=1``; else the variable's value or the default :data:`DEFAULT_LANES`
(never more lanes than cores). :func:`lane_pool` runs them: the process's lane threads (kept
between calls), with torch's thread count divided among the lanes while a scoring holds them
(torch's count is process-wide: every thread follows it) and put back when the last lets go.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

LANES_ENV = "ANOMALY_INSPECTOR_LANES"
#: lanes by default on a CPU with two cores or more (two: measured; more split the cores finer)
DEFAULT_LANES = 2


def score_lanes(device: torch.device, batches: int, env: dict | None = None) -> int:
    """How many batches to score at once: ``batches`` of them on ``device``."""
    if device.type != "cpu" or batches < 2:
        return 1
    raw = (os.environ if env is None else env).get(LANES_ENV, "").strip()
    try:
        wanted = int(raw) if raw else DEFAULT_LANES
    except ValueError:
        raise ValueError(f"{LANES_ENV}={raw!r} is not a whole number of lanes") from None
    cores = max(1, torch.get_num_threads())
    return max(1, min(wanted, cores, batches))


class _Lanes:
    """The process's lane threads (kept between scoring calls, so that a runtime's per-thread
    inference requests are made once) and torch's thread count while any scoring uses them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pools: dict[int, tuple[int, ThreadPoolExecutor]] = {}  # lanes -> (pid, pool)
        self.users = 0
        self.threads_before = 0

    def enter(self, lanes: int) -> ThreadPoolExecutor:
        with self.lock:
            pid, pool = self.pools.get(lanes, (None, None))
            if pool is None or pid != os.getpid():  # a forked child has none of its parent's threads
                pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="score-lane")
                self.pools[lanes] = (os.getpid(), pool)
            if self.users == 0:
                self.threads_before = torch.get_num_threads()
                torch.set_num_threads(max(1, self.threads_before // lanes))
            self.users += 1
            return pool

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                torch.set_num_threads(self.threads_before)


_LANES = _Lanes()


@contextlib.contextmanager
def lane_pool(lanes: int) -> Iterator[ThreadPoolExecutor]:
    """The pool of ``lanes`` threads; while it is held, torch's thread count (process-wide) is
    its count before divided among the lanes, and the first count comes back when the last
    scoring that holds a pool lets go."""
    pool = _LANES.enter(lanes)
    try:
        yield pool
    finally:
        _LANES.leave()
