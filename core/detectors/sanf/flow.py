"""The semantics-aware normalizing flow (paper section 2.2, Fig. 2(a)) as FrEIA modules.

``n`` flow-based learning layers (FLL), each a fixed random channel shuffle
(``FrEIA.modules.PermuteRandom``) followed by :class:`SemanticCoupling`, the affine coupling
of eqs. (1)-(4) in both directions with the soft clamp of eq. (5); the patch tokens are the
flow's condition and reach every coupling's CAFF subnets (section 2.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch

from core.detectors.sanf.caff import CAFF, caff_constructor


def soft_clamp(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 5: sigma_alpha(s) = 2 alpha / pi * atan(s / alpha)."""
    return (2.0 * alpha / math.pi) * torch.atan(s / alpha)


class SemanticCoupling(Fm.InvertibleModule):
    """One FLL coupling (eqs. 1-4) on a class token ``(N, D)`` with patch tokens ``(N, P, D_p)``
    as the condition::

        [y1, y2] = split(y)                          (1)
        y2' = y2 * exp(s1(y1)) + t1(y1)              (2)
        y1' = y1 * exp(s2(y2')) + t2(y2')            (3)
        y'  = concat(y1', y2')                       (4)

    with s soft-clamped by eq. 5 and [s_i, t_i] from a CAFF subnet built by
    ``subnet_constructor(c_in, c_out, token_dim)``.
    """

    def __init__(self, dims_in: Sequence[tuple[int, ...]], dims_c: Sequence[tuple[int, ...]] = (),
                 subnet_constructor: Callable[[int, int, int], CAFF] | None = None, clamp_alpha: float = 3.0) -> None:
        super().__init__(dims_in, dims_c)
        if len(dims_in) != 1 or len(dims_in[0]) != 1:
            raise ValueError(f"SemanticCoupling takes one class token of shape (D,), got {list(dims_in)}")
        if len(self.dims_c) != 1 or len(self.dims_c[0]) != 2:
            raise ValueError(f"SemanticCoupling takes patch tokens of shape (P, D_p) as its condition, got {self.dims_c}")
        if subnet_constructor is None:
            raise ValueError("SemanticCoupling needs a subnet_constructor")
        d = dims_in[0][0]
        if d < 2:
            raise ValueError(f"the class token needs at least 2 channels, got {d}")
        self.d1, self.d2 = d // 2, d - d // 2
        token_dim = self.dims_c[0][1]
        self.alpha = clamp_alpha
        self.subnet1 = subnet_constructor(self.d1, 2 * self.d2, token_dim)  # s1, t1 from y1
        self.subnet2 = subnet_constructor(self.d2, 2 * self.d1, token_dim)  # s2, t2 from y2'

    def _st(self, net: CAFF, h: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = net(h, tokens).chunk(2, dim=1)
        return soft_clamp(s, self.alpha), t

    def forward(self, x, c=(), rev: bool = False, jac: bool = True):
        y = x[0]
        tokens = c[0]
        a, b = y[:, :self.d1], y[:, self.d1:]
        if not rev:
            s1, t1 = self._st(self.subnet1, a, tokens)
            b = b * torch.exp(s1) + t1  # (2)
            s2, t2 = self._st(self.subnet2, b, tokens)
            a = a * torch.exp(s2) + t2  # (3)
            log_jac = s1.sum(1) + s2.sum(1)
        else:
            s2, t2 = self._st(self.subnet2, b, tokens)
            a = (a - t2) * torch.exp(-s2)
            s1, t1 = self._st(self.subnet1, a, tokens)
            b = (b - t1) * torch.exp(-s1)
            log_jac = -(s1.sum(1) + s2.sum(1))
        return (torch.cat([a, b], dim=1),), log_jac  # (4)

    def output_dims(self, input_dims):
        if len(input_dims) != 1:
            raise ValueError(f"SemanticCoupling takes one input, got {len(input_dims)}")
        return input_dims

    def attention(self) -> list[torch.Tensor]:
        """The last call's attention over the patch tokens of both subnets (empty without CAFF)."""
        return [n.last_attention for n in (self.subnet1, self.subnet2) if n.last_attention is not None]


def build_flow(dim: int, token_shape: tuple[int, int], n_layers: int = 4, width: int = 1024, caff: bool = True,
               clamp_alpha: float = 3.0, seed: int = 0,
               subnet_constructor: Callable[[int, int, int], CAFF] | None = None) -> Ff.SequenceINN:
    """2.2 / 3.2: ``n_layers`` FLLs (paper: 4, hidden width 1024, alpha 3). The channel shuffles
    are seeded (``seed + k``); numpy's global generator is left untouched."""
    flow = Ff.SequenceINN(dim)
    make = subnet_constructor or caff_constructor(width, caff)
    state = np.random.get_state()
    try:
        for k in range(n_layers):
            flow.append(Fm.PermuteRandom, seed=seed + k)
            flow.append(SemanticCoupling, cond=0, cond_shape=tuple(token_shape), subnet_constructor=make,
                        clamp_alpha=clamp_alpha)
    finally:
        np.random.set_state(state)
    return flow


def flow_attention(flow: Ff.SequenceINN) -> torch.Tensor | None:
    """Mean CAFF attention over the patch tokens, over all layers and both directions: (N, P)."""
    maps = [a for m in flow.module_list if isinstance(m, SemanticCoupling) for a in m.attention()]
    return torch.stack(maps).mean(0) if maps else None


def nll(z: torch.Tensor, log_jac: torch.Tensor) -> torch.Tensor:
    """Eq. 14 per sample, divided by the dimension D: (||z||^2 / 2 - log|det J|) / D."""
    return (0.5 * (z ** 2).sum(dim=1) - log_jac) / z.shape[1]
