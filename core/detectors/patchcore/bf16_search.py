"""Exact nearest bank patch with a bfloat16 matrix product and a proven error bound (issue 28).

PatchCore spends most of its scoring time in one product: every query patch against every bank
patch (784 x 10,000 x 168 multiply-adds an MTD image). On a CPU with bf16 instructions
(AVX-512 BF16, AMX) that product runs about three times faster in bfloat16 than faiss's float32
one, but bfloat16 keeps 8 significant bits, so its distances alone would pick a wrong
neighbour now and then. Here the bfloat16 product only *proposes*: with

    s(b) = q.b - |b|^2 / 2          (the nearest b has the largest s),

computed from bf16-rounded q and b (the |b|^2 / 2 term split into two bf16 parts, so it enters
almost exactly), every error of the product is bounded (:func:`_margin`): the rounding of the
inputs by (2u + u^2)|q||b| (Cauchy-Schwarz), the float32 accumulation by gamma = (d + 3) 2^-24
times the sums of magnitudes (and the float32 sum that made |b|^2), and the rounding of the bf16
output by u_out |value|. Any bank
patch whose bf16 value lies within twice that bound of the row's largest can be the nearest;
these candidates (6.8 a query on bottle's bank, 2.9 on MTD's) are compared again in float32 as
``|q - b|^2`` directly, and the smallest is the answer. So the result is the exact nearest
neighbour up to float32 rounding, closer to a float64 search than faiss's own float32 (whose
``|q|^2 + |b|^2 - 2 q.b`` loses up to 5e-4 of the distance to cancellation on bottle's features;
this search 2e-7, tests/core/test_bf16_search.py and docs/benchmarks.md).

The bound assumes the bf16 product accumulates in float32 (oneDNN's does);
:func:`accumulates_in_float32` checks that on this machine once, and :class:`BankIndex` uses this
search only where the CPU has bf16 instructions and the check passes.

Two costs beside the product are kept small: the candidates are found on the maxima of blocks of
:data:`BLOCK` bank patches (one reduction over the product instead of a comparison and a
``nonzero`` over all of it; a block is every ``n / BLOCK``-th patch, so that the reduction runs
over whole contiguous rows: 0.8 ms for bottle's product, against 4.3 ms over 8 neighbours), and
the bank is centred on its mean, which shrinks |q| and |b| and with them the bound.
"""

from __future__ import annotations

import functools

import torch

#: bank patches a block: the candidates are first found among block maxima
BLOCK = 8
#: unit roundoff of bfloat16 (8 significant bits, round to nearest) for the inputs, and a bound
#: for the product's output rounding that also covers truncation
U_IN = 2.0 ** -8
U_OUT = 2.0 ** -7
#: query rows a product (keeps the bf16 block near 16 MB for a 10,000-patch bank)
ROWS = 1024


def _product(qp: torch.Tensor, bpt: torch.Tensor) -> torch.Tensor:
    return qp @ bpt


@functools.lru_cache(maxsize=1)
def accumulates_in_float32() -> bool:
    """Whether this machine's bf16 matrix product sums in float32 (:func:`sums_in_float32`)."""
    return sums_in_float32(_product)


def sums_in_float32(product) -> bool:
    """Whether ``product`` (a bf16 matrix product) sums in float32 with one rounding to bf16 at the
    end: on a seeded random 64 x 4,160 by 4,160 x 64 product (longer sums than any feature
    dimension here) its result must be the float64 result rounded to bf16 in all but 0.2 % of the
    entries (float32 sums differ from it only where the exact value lies within about 1e-6 of a
    rounding midpoint: about one entry in 4,096 here). A product that rounds its running sum to
    bf16 anywhere on the way, even once between two blocks of the sum, or keeps it in a format
    much shorter than float32, moves far more entries by a bf16 step (tests/core/test_bf16_search.py)."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(64, 4160, generator=g).bfloat16()
    b = torch.randn(4160, 64, generator=g).bfloat16()
    exact = (a.double() @ b.double()).float().bfloat16()
    return bool((product(a, b) != exact).float().mean() <= 0.002)


class Bf16Nearest:
    """The nearest bank row of each query (Euclidean, k = 1) by a bf16 product that proposes and
    a float32 comparison that decides (module docstring). ``product`` computes the bf16 matrix
    product (tests pass an emulated one to run the same logic on any machine)."""

    def __init__(self, bank: torch.Tensor, product=_product) -> None:
        bank = bank.detach().float().cpu()
        self.n, self.dim = bank.shape
        self.mean = bank.mean(0)
        self.centred = (bank - self.mean).contiguous()
        half = (self.centred * self.centred).sum(1) * 0.5
        self.max_norm = float(self.centred.norm(dim=1).max()) if self.n else 0.0
        hi = (-half).bfloat16()
        lo = (-half - hi.float()).bfloat16()
        pad = (-self.n) % BLOCK
        self.stride = (self.n + pad) // BLOCK  # block k: bank rows k, k + stride, k + 2 stride, ...
        cols = torch.cat([self.centred.bfloat16(), hi[:, None], lo[:, None]], 1)
        if pad:  # padding rows can never be proposed: their value is the most negative bf16
            filler = torch.zeros(pad, self.dim + 2, dtype=torch.bfloat16)
            filler[:, self.dim] = torch.finfo(torch.bfloat16).min
            cols = torch.cat([cols, filler])
        self.bank_t = cols.T.contiguous()  # (dim + 2, n padded)
        self.product = product
        self.candidates = 0  # proposals compared in float32 so far (for benchmarks)

    def _margin(self, q_norm: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """How far below a row's largest bf16 value the nearest patch's value can lie (float64)."""
        u, gamma = U_IN, (self.dim + 3) * 2.0 ** -24
        m = self.max_norm
        qn = q_norm.double()
        # |v - s| for any b: input rounding (2u + u^2)|q||b| and the product's float32 sums (gamma,
        # twice for the (1 + u)^2 of the rounded inputs); the |b|^2 / 2 term: its split into two
        # bf16 parts (u^2), its own float32 sum when the bank was built, and the product's (3 gamma)
        e0 = (2 * u + u * u + 2 * gamma) * qn * m + (u * u + 3 * gamma) * m * m / 2 + 1e-30
        # output rounding, of the row's largest value (|v| <= big) and of the nearest patch's,
        # whose value lies between the largest and 2 e0 below the largest's exact one: |v| <= big + 2 e0
        big = top.double().abs() / (1 - U_OUT)
        out = U_OUT * (2 * big + 2 * e0)
        return (2 * e0 + out) * (1 + 1e-3)

    def _plain(self, qc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 products' answer for a few centred queries (what a query gets whose bound is
        not finite)."""
        from core.detectors.patchcore.anomaly_map import nearest

        d, i = nearest(qc, self.centred, 1)
        return d[:, 0], i[:, 0]

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (Q,), indices (Q,)) of each query's nearest bank row."""
        q = queries.detach().float().cpu() - self.mean
        dists = torch.empty(q.shape[0])
        idxs = torch.empty(q.shape[0], dtype=torch.long)
        ones = torch.ones(min(ROWS, q.shape[0]), 2, dtype=torch.bfloat16)
        for start in range(0, q.shape[0], ROWS):
            qc = q[start:start + ROWS]
            rows = qc.shape[0]
            qp = torch.cat([qc.bfloat16(), ones[:rows]], 1)
            vals = self.product(qp, self.bank_t).view(rows, BLOCK, self.stride)
            blocks = vals.amax(1)  # (rows, stride)
            top = blocks.amax(1).float()
            floor = (top.double() - self._margin(qc.norm(dim=1), top)).float()
            # a query whose bound is not finite (NaN or inf in it, or values beyond float32's
            # range in the product) proposes nothing: the float32 products answer it below
            usable = torch.isfinite(floor)
            rb, cb = ((blocks.float() >= floor[:, None]) & usable[:, None]).nonzero(as_tuple=True)
            inside = vals[rb, :, cb].float() >= floor[rb, None]  # (proposed blocks, BLOCK)
            i, j = inside.nonzero(as_tuple=True)
            r, c = rb[i], j * self.stride + cb[i]
            real = c < self.n  # never a padding row
            r, c = r[real], c[real]
            d2 = ((qc[r] - self.centred[c]) ** 2).sum(1)
            best = torch.full((rows,), float("inf")).scatter_reduce(0, r, d2, "amin")
            # the smallest index among a row's equally near candidates
            at_best = d2 == best[r]
            arg = torch.full((rows,), self.n, dtype=torch.long).scatter_reduce(0, r[at_best], c[at_best], "amin")
            dist = best.sqrt()
            lost = ~torch.isfinite(best)  # nothing proposed (above), or an overflowing distance
            if lost.any():
                dist[lost], arg[lost] = self._plain(qc[lost])
            dists[start:start + rows] = dist
            idxs[start:start + rows] = arg
            self.candidates += int(r.numel())
        return dists, idxs
