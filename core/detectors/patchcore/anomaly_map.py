"""Scoring against the memory bank (paper 3.3), anomaly maps and tiling.

- Nearest-neighbour search: exact (``search_dims`` > 0: approximate, :class:`ReducedSearch`). On
  a CPU with bf16 instructions by a bf16 matrix product that proposes and a float32 comparison
  that decides (:mod:`.bf16_search`, issue 28); on another CPU with ``faiss-cpu``'s flat L2 index (measured 1.4 to 2 times faster here than our chunked matrix
  products, ``benchmarks/patchcore_nn.py`` and docs/benchmarks.md); on a GPU, or where faiss is
  not installed, with chunked torch products.
- Image score (``image_score``, :data:`SCORE_RULES`): eq. 6-7 (``reweighted``), the largest patch
  distance s* re-weighted by how isolated its nearest bank patch m* is among its own b nearest
  bank neighbours; or the plain maximum s* (``max``), the maximum of the blurred map
  (``blurred_max``), or the mean of the largest patch distances (``top_mean``: AnomalyDINO's mean
  of the top 1 %, Damm et al. 2024). Measured against each other in docs/benchmarks.md.
- Map: patch distances on the feature grid, upsampled bilinearly to the working resolution and
  blurred with a Gaussian (``blur_sigma``: the paper's 4 in 3.3 / 4.2; 10 by default, measured).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

#: elements of a query-chunk x bank distance block (about 64 MB of float32)
CHUNK_ELEMENTS = 16 * 1024 * 1024


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
            bank_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest bank rows of each query (Euclidean): (distances (Q, k), indices (Q, k)).

    Queries are taken in chunks so that a chunk's distance block stays near 64 MB whatever the
    bank size. Distances come from ``|q|^2 - 2 q.b + |b|^2`` (one fused matrix product a chunk,
    ``|q|^2`` added after the minimum), clamped at zero before the square root.
    """
    k = min(k, bank.shape[0])
    if bank_sq is None:
        bank_sq = (bank * bank).sum(1)
    rows = max(1, CHUNK_ELEMENTS // max(1, bank.shape[0]))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows]
        # |b|^2 - 2 q.b in one fused product; |q|^2 is the same along a row, added after the minimum
        part = torch.addmm(bank_sq[None], q, bank.T, alpha=-2.0)
        val, idx = torch.topk(part, k, dim=1, largest=False) if k > 1 else part.min(dim=1, keepdim=True)
        dists.append(val.add_((q * q).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_search_usable() -> bool:
    """Whether :class:`~core.detectors.patchcore.bf16_search.Bf16Nearest` pays here: a CPU that
    computes bf16 natively and a bf16 product that accumulates in float32 (its bound needs it)."""
    from core.detectors.patchcore.bf16_search import accumulates_in_float32
    from core.runtime.device import machine_info

    return bool(machine_info().get("bf16_instructions")) and accumulates_in_float32()


#: ``ANOMALY_INSPECTOR_SEARCH`` (``bf16`` / ``faiss`` / ``torch``) overrides what ``auto`` picks
SEARCH_ENV = "ANOMALY_INSPECTOR_SEARCH"
SEARCH_BACKENDS = ("auto", "bf16", "faiss", "torch")


class BankIndex:
    """Exact nearest-neighbour search in a fixed bank. For a CPU bank: the bf16 product with a
    float32 decision (``"bf16"``, :mod:`~core.detectors.patchcore.bf16_search`) where the CPU has
    bf16 instructions, else faiss (``IndexFlatL2``) when installed, else :func:`nearest`
    (``"torch"``, also every GPU bank). ``backend`` forces one. The bf16 search answers k = 1 (all
    that scoring asks); a search for more neighbours next to it goes to :func:`nearest`."""

    def __init__(self, bank: torch.Tensor, backend: str = "auto", dims: int = 0) -> None:
        self.dims = int(dims)
        self._reduced = None
        if 0 < self.dims < bank.shape[1]:
            self._reduced = ReducedSearch(bank, self.dims, backend)
            # k > 1 (the re-weighting's neighbours) stays exact, by :func:`nearest` below
            self.bank, self.bank_sq, self._bf16, self._index = bank, (bank * bank).sum(1), None, None
            self.backend = f"pca{self.dims}+{self._reduced.sub.backend}"
            return
        if backend == "auto":
            backend = os.environ.get(SEARCH_ENV, "").strip().lower() or "auto"
        if backend not in SEARCH_BACKENDS:
            raise ValueError(f"unknown nearest-neighbour search '{backend}' (known: {', '.join(SEARCH_BACKENDS)}; "
                             f"from {SEARCH_ENV}?)")
        self.bank = bank
        self.bank_sq = (bank * bank).sum(1)
        cpu = bank.device.type == "cpu"
        self._bf16 = None
        if backend == "bf16" or (backend == "auto" and cpu and bf16_search_usable()):
            from core.detectors.patchcore.bf16_search import Bf16Nearest, accumulates_in_float32

            if not accumulates_in_float32():
                raise RuntimeError("the bf16 search needs a bf16 matrix product that sums in float32, "
                                   "and this machine's does not")

            self._bf16 = Bf16Nearest(bank)
        use_faiss = backend == "faiss" or (backend == "auto" and self._bf16 is None and cpu and faiss_available())
        self._index = None
        if use_faiss:
            import faiss

            self._index = faiss.IndexFlatL2(bank.shape[1])
            self._index.add(np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32))
        self.backend = "bf16" if self._bf16 is not None else "faiss" if self._index is not None else "torch"

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (Q, k), indices (Q, k)), Euclidean, nearest first."""
        if k == 1 and self._reduced is not None:
            single = self._reduced
        elif self._bf16 is not None and (k == 1 or self.bank.shape[0] == 1):
            single = self._bf16
        else:
            single = None
        if single is not None:  # the searches that answer the nearest alone
            d, i = single.search(queries)
            return d[:, None].to(queries.device), i[:, None].to(queries.device)
        if self._index is None:
            return nearest(queries, self.bank, k, self.bank_sq)
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        d2, idx = self._index.search(q, min(k, self.bank.shape[0]))
        return (torch.from_numpy(d2).clamp_min_(0.0).sqrt_().to(queries.device),
                torch.from_numpy(idx).long().to(queries.device))


class ReducedSearch:
    """An approximate nearest bank patch (``search_dims``, fifth session): the nearest in the bank's
    first ``dims`` principal components (centred on the bank's mean), found there exactly by a
    :class:`BankIndex` of its own, its distance then computed in all dimensions (as ``|q - b|``
    directly). The distance is never below the exact nearest distance, and equal where the two
    nearest patches agree -- up to rounding: the exact faiss and torch products compute
    ``|q|^2 - 2 q.b + |b|^2``, which loses up to 0.06 near zero on MTD's features, where this is
    the more precise of the two. The bank search is
    the bulk of a scoring's CPU and its matrix product already runs near this CPU's peak, so only
    fewer multiply-adds make it faster: 64 of Lite2's 168 dimensions take an MTD scan from 57-59
    to 77 images/s and cost 0.0028 of image AUROC (bottle: 36.9 -> 41.9, no change);
    docs/benchmarks.md "A search in fewer dimensions"."""

    def __init__(self, bank: torch.Tensor, dims: int, backend: str = "auto") -> None:
        x = bank.detach().float()
        self.mean = x.mean(0)
        self.centred = (x - self.mean).contiguous()
        # principal axes from the d x d covariance (the bank has far more rows than dimensions)
        cov = (self.centred.T @ self.centred).double()
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        self.proj = vecs[:, -dims:].flip(1).to(x.dtype).contiguous()  # (d, dims), largest first
        self.sub = BankIndex(self.centred @ self.proj, backend)

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qc = queries.detach().float().to(self.centred.device) - self.mean
        _, idx = self.sub.search(qc @ self.proj, 1)
        idx = idx[:, 0].to(self.centred.device)
        return (qc - self.centred[idx]).norm(dim=1), idx


def reweighted_score(patch_dist: torch.Tensor, patch_idx: torch.Tensor, queries: torch.Tensor,
                     bank: torch.Tensor, b: int) -> float:
    """Eq. 6-7 for one image.

    ``patch_dist`` / ``patch_idx``: each test patch's distance to, and index of, its nearest
    bank patch; ``queries``: the image's patch features. With m_test,* the patch of largest
    distance s* (eq. 6) and m* its nearest bank patch,
    s = (1 - exp||m_test,* - m*|| / sum_{m in N_b(m*)} exp||m_test,* - m||) * s*,
    N_b(m*) being the b nearest bank patches of m* (m* itself among them, at distance 0).
    N_b(m*) is found when scoring (one row of distances per image) rather than stored for the
    whole bank; the ratio is computed as exp(s* - logsumexp) so that exp cannot overflow.
    ``b`` <= 1 gives the plain maximum s*.
    """
    t = int(torch.argmax(patch_dist))
    s_star = patch_dist[t].double()
    if b <= 1 or bank.shape[0] <= 1:
        return float(s_star)
    m_star = bank[int(patch_idx[t])]
    to_m_star = torch.linalg.vector_norm(bank - m_star[None], dim=1)
    nb = torch.topk(to_m_star, min(b, bank.shape[0]), largest=False).indices
    d = torch.linalg.vector_norm(bank[nb] - queries[t][None], dim=1).double()
    w = 1.0 - torch.exp(s_star - torch.logsumexp(d, dim=0))
    return float(w * s_star)


SCORE_RULES = ("reweighted", "max", "blurred_max", "top_mean")


def top_count(top: float, n: int) -> int:
    """How many of ``n`` patch distances ``top_mean`` averages: ``top`` >= 1 is a count, below 1
    a fraction (rounded up); at least 1, at most ``n``."""
    k = int(top) if top >= 1 else int(math.ceil(top * n))
    return max(1, min(n, k))


def top_mean(values: torch.Tensor, top: float) -> float:
    """Mean of the ``top_count(top, n)`` largest of ``values`` (any shape)."""
    v = values.flatten()
    return float(torch.topk(v, top_count(top, v.numel())).values.double().mean())


# ----------------------------------------------------------------------------- tiling
def tile_boxes(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Boxes (top, left, bottom, right) of square ``tile`` x ``tile`` tiles covering the image,
    neighbours overlapping by at least ``overlap`` of a tile; the last row and column are
    pushed back inside the image. An image no larger than a tile is one box."""
    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = max(1, int(math.floor(tile * (1.0 - overlap))))
        n = math.ceil((size - tile) / step) + 1
        # spread the n tiles evenly so that the overlap is the same everywhere
        return [int(round(i * (size - tile) / (n - 1))) for i in range(n)]

    th, tw = min(tile, height), min(tile, width)
    return [(y, x, y + th, x + tw) for y in starts(height) for x in starts(width)]


def stitch(maps: list[np.ndarray], boxes: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Average tile maps (each the size of its box) into one (H, W) map."""
    acc = np.zeros(shape, dtype=np.float64)
    cnt = np.zeros(shape, dtype=np.float64)
    for m, (t, left, b, r) in zip(maps, boxes):
        if m.shape != (b - t, r - left):
            raise ValueError(f"tile map {m.shape} does not fit its box {(b - t, r - left)}")
        acc[t:b, left:r] += m
        cnt[t:b, left:r] += 1.0
    if (cnt == 0).any():
        raise ValueError("the tiles do not cover the image")
    return (acc / cnt).astype(np.float32)
