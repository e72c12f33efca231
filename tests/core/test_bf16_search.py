"""The bf16-proposed, float32-decided nearest-neighbour search (issue 28): exact on hard cases.

The search logic runs on every machine with an emulated bf16 product (float64 sums of the
bf16-rounded inputs, rounded once to bf16: the model the error bound is written for); the
machine's own product where it sums in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.detectors.patchcore import bf16_search
from core.detectors.patchcore.anomaly_map import BankIndex
from core.detectors.patchcore.bf16_search import Bf16Nearest, accumulates_in_float32


def emulated(qp: torch.Tensor, bank_t: torch.Tensor) -> torch.Tensor:
    return (qp.double() @ bank_t.double()).to(torch.bfloat16)


def brute(q: torch.Tensor, bank: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    d = torch.cdist(q.double(), bank.double())
    best = d.min(1).values
    # the smallest index among exact ties
    idx = torch.stack([torch.nonzero(row == m)[0, 0] for row, m in zip(d, best)])
    return best.numpy(), idx.numpy()


def cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    bank = torch.randn(1003, 24, generator=g) * 3  # not a multiple of the block
    out["random"] = (bank[torch.randint(0, 1003, (300,), generator=g)] + torch.randn(300, 24, generator=g), bank)
    # far from the origin (large |q| and |b| against small distances: the cancellation case)
    far = torch.randn(500, 16, generator=g) * 0.5 + 400.0
    out["far from the origin"] = (far[:200] + torch.randn(200, 16, generator=g) * 0.05, far)
    # near-ties: each query has 40 bank points at almost the same distance
    centre = torch.randn(50, 32, generator=g) * 5
    ring = torch.randn(50, 40, 32, generator=g)
    ring = centre[:, None] + 7.0 * ring / ring.norm(dim=2, keepdim=True) * (1 + 1e-3 * torch.rand(50, 40, 1, generator=g))
    out["near ties"] = (centre, ring.reshape(-1, 32))
    dup = torch.randn(64, 8, generator=g)
    out["duplicates"] = (dup[:20] + 0.01, torch.cat([dup, dup]))  # exact ties: the first copy wins
    out["one patch"] = (torch.randn(5, 8, generator=g), torch.randn(1, 8, generator=g))
    return out


@pytest.mark.parametrize("name", list(cases()))
def test_emulated_bf16_search_finds_the_exact_nearest(name):
    q, bank = cases()[name]
    d, i = Bf16Nearest(bank, product=emulated).search(q)
    ref_d, ref_i = brute(q, bank)
    assert np.array_equal(i.numpy(), ref_i)
    assert np.allclose(d.numpy(), ref_d, rtol=1e-5, atol=1e-6)


def test_without_its_margin_the_bf16_proposal_alone_picks_wrong_neighbours(monkeypatch):
    # the margin is what makes the search exact: the bf16 maximum alone misses on near ties
    q, bank = cases()["near ties"]
    monkeypatch.setattr(Bf16Nearest, "_margin", lambda self, qn, top: torch.zeros_like(top, dtype=torch.float64))
    _, i = Bf16Nearest(bank, product=emulated).search(q)
    assert not np.array_equal(i.numpy(), brute(q, bank)[1])


def test_queries_beyond_one_product_are_searched_in_chunks(monkeypatch):
    monkeypatch.setattr(bf16_search, "ROWS", 7)
    q, bank = cases()["random"]
    _, i = Bf16Nearest(bank, product=emulated).search(q)
    assert np.array_equal(i.numpy(), brute(q, bank)[1])


@pytest.mark.skipif(not accumulates_in_float32(), reason="this machine's bf16 product does not sum in float32")
@pytest.mark.parametrize("name", list(cases()))
def test_bf16_bank_index_on_this_machine_is_exact(name):
    q, bank = cases()[name]
    index = BankIndex(bank, backend="bf16")
    assert index.backend == "bf16"
    d, i = index.search(q, 1)
    ref_d, ref_i = brute(q, bank)
    assert np.array_equal(i[:, 0].numpy(), ref_i)
    assert np.allclose(d[:, 0].numpy(), ref_d, rtol=1e-5, atol=1e-6)
    d2, i2 = index.search(q, 2)  # more neighbours: the float32 product's search
    assert i2.shape == (q.shape[0], min(2, bank.shape[0]))


def test_auto_uses_the_bf16_search_only_with_bf16_instructions_and_float32_sums(monkeypatch):
    import core.runtime.device as device

    bank = torch.randn(50, 8)
    for instructions, sums, expect in [(True, True, "bf16"), (False, True, "other"), (True, False, "other")]:
        monkeypatch.setattr(device, "machine_info", lambda *a, _v=instructions, **k: {"bf16_instructions": _v})
        monkeypatch.setattr(bf16_search, "accumulates_in_float32", lambda _v=sums: _v)
        backend = BankIndex(bank).backend
        assert (backend == "bf16") == (expect == "bf16"), (instructions, sums, backend)
    with pytest.raises(RuntimeError, match="sums in float32"):
        BankIndex(bank, backend="bf16")


def test_the_search_environment_variable_picks_the_backend(monkeypatch):
    from core.detectors.patchcore.anomaly_map import SEARCH_ENV

    bank = torch.randn(30, 4)
    monkeypatch.setenv(SEARCH_ENV, "torch")
    assert BankIndex(bank).backend == "torch"
    monkeypatch.setenv(SEARCH_ENV, "quantum")
    with pytest.raises(ValueError, match="unknown nearest-neighbour search 'quantum'"):
        BankIndex(bank)


def test_a_query_that_is_not_finite_gets_the_plain_answer_and_spares_the_others():
    q, bank = cases()["random"]
    q = q.clone()
    q[3, 0], q[7, 2] = float("nan"), float("inf")
    d, i = Bf16Nearest(bank, product=emulated).search(q)
    ok = torch.ones(len(q), dtype=torch.bool)
    ok[[3, 7]] = False
    ref_d, ref_i = brute(q[ok], bank)
    assert np.array_equal(i[ok].numpy(), ref_i) and np.allclose(d[ok].numpy(), ref_d, rtol=1e-5)
    assert not torch.isfinite(d[[3, 7]]).any()  # not a number in, not a number out: never a valid score
    assert ((i >= 0) & (i < len(bank))).all()  # and an index into the bank (never past its end)


def round_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(m * 2.0 ** bits) / 2.0 ** bits, e)


def test_the_float32_sum_check_tells_a_float32_sum_from_shorter_ones():
    from core.detectors.patchcore.bf16_search import sums_in_float32

    def rounded_every(block, bits=8):
        """A product that rounds its running sum to ``bits`` significant bits every ``block`` terms."""
        def product(a, b):
            a, b = a.double(), b.double()
            acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
            for start in range(0, a.shape[1], block):
                acc = round_bits(acc + a[:, start:start + block] @ b[start:start + block], bits)
            return acc.bfloat16()
        return product

    def float32_sums(a, b):
        return (a.float() @ b.float()).bfloat16()

    assert sums_in_float32(emulated)  # float64 sums, one rounding at the end
    assert sums_in_float32(float32_sums)
    for block in (1, 16, 64, 256, 2048):
        assert not sums_in_float32(rounded_every(block)), block
    assert not sums_in_float32(rounded_every(32, bits=18))  # a sum kept in 18 bits


def adversarial(qp: torch.Tensor, bank_t: torch.Tensor) -> torch.Tensor:
    """A bf16 product as bad as the bound allows beyond the inputs' rounding: the float sums off
    by their whole allowance (gamma times the sums of magnitudes), against each row's leader and
    for every other column, and the output truncated (2^-7) in the same directions."""
    a, b = qp.double(), bank_t.double()
    v = a @ b
    gamma = (qp.shape[1] + 1) * 2.0 ** -24
    slack = gamma * (a.abs() @ b.abs())
    lead = v == v.max(1, keepdim=True).values
    pushed = torch.where(lead, v - slack, v + slack)
    m, e = torch.frexp(pushed)
    step = torch.where(lead, torch.floor(m * 2.0 ** 7), torch.ceil(m * 2.0 ** 7)) / 2.0 ** 7
    return torch.ldexp(step, e).to(torch.bfloat16)


@pytest.mark.parametrize("name", ["random", "near ties", "far from the origin"])
def test_the_search_stays_exact_under_the_worst_product_the_bound_allows(name):
    q, bank = cases()[name]
    _, i = Bf16Nearest(bank, product=adversarial).search(q)
    assert np.array_equal(i.numpy(), brute(q, bank)[1])


def test_the_adversarial_product_defeats_a_tenth_of_the_margin(monkeypatch):
    # the bound is a worst case (Cauchy-Schwarz on the inputs' rounding): this product, which
    # spends the sums' and the output's whole allowance, needs more than a tenth of it
    q, bank = cases()["near ties"]
    margin = Bf16Nearest._margin
    monkeypatch.setattr(Bf16Nearest, "_margin", lambda self, qn, top: margin(self, qn, top) / 10)
    _, i = Bf16Nearest(bank, product=adversarial).search(q)
    assert not np.array_equal(i.numpy(), brute(q, bank)[1])


def test_a_query_far_outside_the_bank_proposes_few_candidates_and_huge_ones_do_not_crash():
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(1003, 24, generator=g)  # not a multiple of the block: padding rows exist
    far = torch.randn(16, 24, generator=g) * 80 * float(bank.norm(dim=1).max())
    index = Bf16Nearest(bank, product=emulated)
    _, i = index.search(far)
    assert np.array_equal(i.numpy(), brute(far, bank)[1])
    assert index.candidates / len(far) < 50  # not most of the bank (the first bound took 91 %)
    huge = torch.randn(4, 24, generator=g) * 1e19  # the bound overflows: the float32 products answer
    d, i = index.search(huge)  # (before: an IndexError on a padding row)
    assert ((i >= 0) & (i < len(bank))).all() and not torch.isnan(d).any()  # |q - b|^2 overflows float32: inf
