"""How OpenMP's idle threads wait, set before torch or faiss load (they read it once).

torch and faiss each run their parallel regions on a pool of OpenMP threads, and by default a
thread whose work is done spins for a while before it sleeps. In one process the two pools'
spinning threads take the cores from each other, and on a machine whose cores are busy with
other work they take them from the thread that has work. Measured on the 2-core machine
(``benchmarks/bench_omp_wait.py``, docs/benchmarks.md "OpenMP wait policy"): idle, a
short spin (``GOMP_SPINCOUNT=1000``) makes EfficientNet-Lite0's patch features 1.5x and the
faiss search 1.7x faster than the default; with three other busy processes, 1.9x and 2.4x.

:func:`configure` sets ``GOMP_SPINCOUNT=1000`` (GNU OpenMP, which torch and faiss-cpu use on
Linux; other OpenMP runtimes ignore it) unless the user set ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` themselves. The application calls it first thing (``app/__init__.py``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPINCOUNT = "1000"


def configure(env: MutableMapping[str, str] | None = None) -> bool:
    """Set the short spin in ``env`` (default ``os.environ``); False when the user chose already."""
    env = os.environ if env is None else env
    if "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env:
        return False
    env["GOMP_SPINCOUNT"] = SPINCOUNT
    return True
