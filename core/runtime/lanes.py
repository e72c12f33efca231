"""Scoring lanes: two batches scored at once on a CPU, each on its own thread (issue 28).

A scan on a 2-core CPU alternates parts that use both cores well (the network, the bank search)
with parts that use one (resizing a map, the score rule, Python between them), and its threads
wait for each other at every parallel region. Two *lanes* — two batches in flight, each on a
thread of its own with half of the caller's torch threads — keep both cores busy instead.
Measured on the 2-core EPYC (docs/benchmarks.md, "Two scoring lanes"), with scores equal to the
last bit: torch float32 a fifth to a quarter faster, OpenVINO bf16 about a tenth on bottle.

:func:`score_lanes` says how many lanes a scoring call gets: 1 on a GPU, for one batch, or with
``ANOMALY_INSPECTOR_LANES=1``; else the variable's value or the default :data:`DEFAULT_LANES`
(never more lanes than cores; 1 for a scoring started on a lane). :func:`lane_pool` holds the
process's lane threads (kept between calls); :func:`run_in_lane` runs a batch on one with the
caller's torch threads divided among the lanes (torch's own count for the lane thread; the
runtimes' sessions keep the threads they were made with).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
LANES_ENV = "ANOMALY_INSPECTOR_LANES"
#: lanes by default on a CPU with two cores or more (two: measured; more split the cores finer)
DEFAULT_LANES = 2


def score_lanes(device: torch.device, batches: int, env: dict | None = None) -> int:
    """How many batches to score at once: ``batches`` of them on ``device``."""
    if device.type != "cpu" or batches < 2 or in_lane():
        return 1
    raw = (os.environ if env is None else env).get(LANES_ENV, "").strip()
    try:
        wanted = int(raw) if raw else DEFAULT_LANES
    except ValueError:
        raise ValueError(f"{LANES_ENV}={raw!r} is not a whole number of lanes") from None
    cores = max(1, torch.get_num_threads())
    return max(1, min(wanted, cores, batches))


class _Lanes:
    """The process's lane threads, kept between scoring calls so that a runtime's per-thread
    inference requests are made once (a forked child makes its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pools: dict[int, tuple[int, ThreadPoolExecutor]] = {}  # lanes -> (pid, pool)
        self.users = 0  # scorings holding lanes now (tests read it)
        self.local = threading.local()

    def enter(self, lanes: int) -> ThreadPoolExecutor:
        with self.lock:
            pid, pool = self.pools.get(lanes, (None, None))
            if pool is None or pid != os.getpid():  # a forked child has none of its parent's threads
                pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="score-lane")
                self.pools[lanes] = (os.getpid(), pool)
            self.users += 1
            return pool

    def leave(self) -> None:
        with self.lock:
            self.users -= 1


_LANES = _Lanes()


def in_lane() -> bool:
    """Whether this thread is scoring a batch on a lane (a scoring it starts gets no lanes: the
    pool's threads are busy with its caller's batches)."""
    return bool(getattr(_LANES.local, "busy", False))


@functools.lru_cache(maxsize=1)
def _openmp():
    """torch's own OpenMP runtime, whose ``omp_set_num_threads`` sets the *calling* thread's count
    only (``torch.set_num_threads`` also sets the process-wide count that every thread takes at its
    first parallel region), or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for pattern in ("libgomp*.so*", "libiomp5*", "libomp*", "libgomp*.dylib"):
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            try:
                lib = ctypes.CDLL(path)  # the library torch loaded: the same runtime and counts
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
                return lib
            except (OSError, AttributeError):
                continue
    return None


@contextlib.contextmanager
def _own_thread_count(threads: int, fallback: bool) -> Iterator[None]:
    """This thread on ``threads`` torch threads meanwhile, its count put back after: through
    torch's OpenMP runtime (this thread only); where that is not found, ``torch.set_num_threads``
    when ``fallback`` (which also moves the count of threads that start using torch meanwhile),
    else nothing."""
    before = torch.get_num_threads()  # this thread takes the process's count now, not over ours later
    omp = _openmp()
    set_count = omp.omp_set_num_threads if omp is not None else torch.set_num_threads if fallback else None
    if set_count is not None:
        set_count(threads)
    try:
        yield
    finally:
        if set_count is not None:
            set_count(before)


def run_in_lane(threads: int, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` on a lane thread with ``threads`` torch threads (:func:`_own_thread_count`);
    the caller's and every other thread's count stay as they were."""
    with _own_thread_count(threads, fallback=True):
        _LANES.local.busy = True
        try:
            return fn(*args)
        finally:
            _LANES.local.busy = False


@contextlib.contextmanager
def lane_pool(lanes: int, threads: int | None = None) -> Iterator[ThreadPoolExecutor]:
    """The pool of ``lanes`` threads, held for one scoring call (submit with :func:`run_in_lane`).
    With ``threads``, the calling thread runs on that many torch threads meanwhile too (what it
    does between the lanes' batches — reading the next one, keeping the results — then does not
    compete with them); only its own count, and only where torch's OpenMP runtime is found."""
    pool = _LANES.enter(lanes)
    try:
        with _own_thread_count(threads, fallback=False) if threads else contextlib.nullcontext():
            yield pool
    finally:
        _LANES.leave()
