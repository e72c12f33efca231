"""The OpenMP wait policy is set before torch loads, unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys

from core.runtime import openmp

PROBE = "import sys, os, app; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout.split()


def test_the_app_sets_a_short_spin_before_torch_loads():
    assert _probe() == ["1000", "False"]  # set, and torch is not loaded yet when it is


def test_a_users_choice_is_kept():
    assert _probe(GOMP_SPINCOUNT="5")[0] == "5"
    assert _probe(OMP_WAIT_POLICY="ACTIVE")[0] == "None"
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp.configure(env) is False and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    assert openmp.configure(env) is True and env == {"GOMP_SPINCOUNT": "1000"}
