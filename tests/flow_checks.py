"""One check of a normalizing flow's log-determinant, shared by the DifferNet and SANF tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def assert_log_det_matches_autograd(forward: Callable[[torch.Tensor, int], torch.Tensor],
                                    x: torch.Tensor, log_jac: torch.Tensor) -> None:
    """``log_jac[i]`` (the flow's own log|det J| of sample i) against the log-determinant of the
    Jacobian autograd takes of ``forward(v, i)`` (sample i's output for the input row ``v``).

    Both are float64. The reference used to be central differences with a step of 1e-6, whose
    rounding error (about |z| * 1e-16 / 1e-6, amplified by the Jacobian's conditioning) reached
    6e-6 on an AMD EPYC machine and 1.5e-5 on an Intel AVX-512 one, past the 1e-5 tolerance taken
    from one machine. Autograd's Jacobian is exact up to float64 rounding, so the tolerance is a
    float64 one: sqrt(eps) relative (1.5e-8; both sides agree to about 1e-12), independent of the
    machine and a thousand times tighter than the old one.
    """
    assert x.dtype == torch.float64, "the check needs float64 inputs"
    for i in range(x.shape[0]):
        with torch.enable_grad():
            jac = torch.autograd.functional.jacobian(lambda v, i=i: forward(v, i), x[i])
        assert jac.dtype == torch.float64 and jac.shape == (x.shape[1], x.shape[1])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        tol = torch.finfo(torch.float64).eps ** 0.5 * max(1.0, abs(float(logabs)))
        assert float(logabs) == pytest.approx(float(log_jac[i]), abs=tol)
