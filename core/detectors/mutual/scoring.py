"""Mutual scoring (MuSc, Li et al., ICLR 2024, section 3.3, "MSM") and image-level re-scoring
(3.4, "RsCIN") on plain arrays: no detector, no cache, no I/O.

- :func:`reference_sets`: which other images of the batch each image is compared with. The
  paper compares every image with all the others (N - 1 references). DEPARTURE (cost): a batch of
  1,300 images on two CPU cores cannot afford N^2 / 2 image pairs, so each image takes the ``R``
  others of smallest *rendezvous hash* of the pair (a seeded 64-bit hash of the two images'
  content keys). The choice is a seeded random sample that depends on the two images alone, so
  adding images to a batch changes an old image's references only where a new image ranks among
  its R (what makes re-scoring a grown batch incremental), and ``R >= N - 1`` is the paper's full
  comparison.
- :func:`pair_min_distances`: for one query image and its references, each query patch's
  distance to its nearest patch in each reference (3.3, the patch-to-image distance), and each
  reference patch's distance to its nearest query patch (the same product gives both
  directions, so a pair is computed once). Exact: one blocked matrix product per query
  (``|q|^2 + |r|^2 - 2 q.r``), or faiss' exact flat index per reference (``search=faiss``).
- :func:`interval_average`: 3.3, eq. 4: a patch's score is the mean of the lowest ``fraction``
  (paper: 30 %) of its distances to the reference images ("interval average", the authors'
  ``topmin_min=0, topmin_max=0.3``): a normal patch has close look-alikes in most other images,
  a defect patch in few or none, and the few images that share its defect do not pull it down.
- :func:`rescore`: 3.4, RsCIN: image scores min-max normalised over the batch, then each image's
  score replaced by the mean, over window sizes ``k`` (paper, MVTec AD: 1, 2, 3), of the
  similarity-weighted mean of the scores of its ``k`` most similar images (itself included),
  similarity being the cosine of image-level features. The paper uses the ViT's class token; a
  CNN has none, so we use its deepest stage, average-pooled (see :mod:`.torch_model`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: query rows x reference columns of one distance block (about 64 MB of float32)
BLOCK_ELEMENTS = 16 * 1024 * 1024
SEARCHES = ("torch", "faiss")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (a bijective, well-mixed 64-bit hash)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def item_keys(digests: Sequence[bytes]) -> np.ndarray:
    """One 64-bit key per image from its content digest; the k-th copy of the same content in a
    batch gets the k-th key of that content, so identical images stay distinct items."""
    seen: dict[bytes, int] = {}
    raw = np.empty(len(digests), dtype=np.uint64)
    for i, d in enumerate(digests):
        k = seen.get(d, 0)
        seen[d] = k + 1
        raw[i] = np.uint64(int.from_bytes(d[:8], "little")) ^ splitmix64(np.array([k], dtype=np.uint64))[0]
    return splitmix64(raw)


def pair_ranks(keys: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """Rendezvous values of the pairs (rows[i], j) for every j: a seeded hash of the two keys,
    the same whichever image comes first; a pair of an image with itself is the largest value."""
    a = keys[rows][:, None]
    b = keys[None, :]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    s = splitmix64(np.array([seed], dtype=np.uint64))[0]
    v = splitmix64(splitmix64(lo ^ s) ^ hi)
    v[np.arange(len(rows)), rows] = _M64
    return v


def reference_sets(keys: np.ndarray, r: int, seed: int, chunk: int = 512) -> list[np.ndarray]:
    """Each image's references (indices into the batch, ascending): the ``r`` other images of
    smallest pair rank, or every other image when ``r`` is 0 or at least N - 1."""
    n = len(keys)
    if r <= 0 or r >= n - 1:
        return [np.delete(np.arange(n), i) for i in range(n)]
    out: list[np.ndarray] = []
    for s in range(0, n, chunk):  # rows in chunks: bounded memory for large batches
        rows = np.arange(s, min(n, s + chunk))
        v = pair_ranks(keys, rows, seed)
        part = np.argpartition(v, r - 1, axis=1)[:, :r]
        out.extend(np.sort(p) for p in part)
    return out


def squared_norms(feats: torch.Tensor) -> torch.Tensor:
    """(P,) float32 squared lengths of (P, D) features (as float32)."""
    f = feats.float()
    return (f * f).sum(1)


def pair_min_distances(q: torch.Tensor, refs: Sequence[torch.Tensor], search: str = "torch", both: bool = True,
                       norms: Sequence[torch.Tensor] | None = None) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Exact nearest-patch distances between one query image and each reference image.

    ``q``: (Pq, D) the query's patch features; ``refs``: (Pj, D) each reference's (any float
    dtype: they are concatenated first, then made float32 in one go); ``norms``: their squared
    lengths (:func:`squared_norms`), if already known. Returns ``(to_refs, from_refs)``:
    ``to_refs`` (Pq, R) float32, each query patch's distance to its nearest patch of reference j;
    ``from_refs[j]`` (Pj,) each patch of reference j's distance to its nearest query patch
    (``None`` unless ``both``).
    """
    if search not in SEARCHES:
        raise ValueError(f"unknown search '{search}' (known: {', '.join(SEARCHES)})")
    q = q.float()
    if search == "faiss":
        return _faiss_min_distances(q, refs, both)
    q_sq = squared_norms(q)
    to_refs = np.empty((q.shape[0], len(refs)), dtype=np.float32)
    from_refs: list[np.ndarray | None] = [None] * len(refs)
    j = 0
    while j < len(refs):  # references in blocks of about BLOCK_ELEMENTS distances
        k, cols = j, 0
        while k < len(refs) and (k == j or (cols + refs[k].shape[0]) * q.shape[0] <= BLOCK_ELEMENTS):
            cols += refs[k].shape[0]
            k += 1
        block = torch.cat(list(refs[j:k])).float()  # one conversion per block: few large operations
        r_sq = torch.cat(list(norms[j:k])).float() if norms is not None else squared_norms(block)
        # |r|^2 - 2 q.r in one fused product; |q|^2 added to every row below
        d2 = torch.addmm(r_sq[None], q, block.T, alpha=-2.0)
        sizes = [r.shape[0] for r in refs[j:k]]
        if d2.is_cuda:
            d2.add_(q_sq[:, None]).clamp_min_(0.0)
            parts = torch.split(d2, sizes, dim=1)
            to_refs[:, j:k] = torch.stack([p.amin(1) for p in parts], 1).sqrt_().cpu().numpy()
            if both:
                for t, p in enumerate(parts):
                    from_refs[j + t] = p.amin(0).sqrt_().cpu().numpy()
        else:  # numpy's single-threaded reductions: one call for the whole block, fast on a busy CPU
            m = d2.numpy()
            m += q_sq.numpy()[:, None]
            starts = np.cumsum([0] + sizes[:-1])
            to_refs[:, j:k] = np.sqrt(np.maximum(np.minimum.reduceat(m, starts, axis=1), 0.0))
            if both:
                cmin = np.sqrt(np.maximum(m.min(0), 0.0))
                for t, (s0, n0) in enumerate(zip(starts, sizes)):
                    from_refs[j + t] = cmin[s0:s0 + n0]
        j = k
    return to_refs, from_refs


def _faiss_min_distances(q: torch.Tensor, refs: Sequence[torch.Tensor],
                         both: bool) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """``search=faiss``: faiss' exact flat L2 search, once per reference and direction."""
    import faiss

    qn = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)
    to_refs = np.empty((q.shape[0], len(refs)), dtype=np.float32)
    from_refs: list[np.ndarray | None] = [None] * len(refs)
    for j, r in enumerate(refs):
        rn = np.ascontiguousarray(r.float().cpu().numpy(), dtype=np.float32)
        d2, _ = faiss.knn(qn, rn, 1)
        to_refs[:, j] = np.sqrt(np.maximum(d2[:, 0], 0.0))
        if both:
            d2, _ = faiss.knn(rn, qn, 1)
            from_refs[j] = np.sqrt(np.maximum(d2[:, 0], 0.0))
    return to_refs, from_refs


def interval_count(n_refs: int, fraction: float) -> int:
    """How many of ``n_refs`` distances the interval average takes: ``floor(fraction * n_refs)``
    as the authors' code, but at least 1 (their code fails below 1 / fraction references)."""
    return max(1, min(n_refs, int(fraction * n_refs)))


def interval_average(dists: np.ndarray, fraction: float, axis: int = 0) -> np.ndarray:
    """Eq. 4: the mean of the lowest ``interval_count`` values along ``axis`` (the references)."""
    d = np.asarray(dists, dtype=np.float32)
    k = interval_count(d.shape[axis], fraction)
    low = np.partition(d, k - 1, axis=axis) if k < d.shape[axis] else d
    return np.take(low, np.arange(k), axis=axis).mean(axis=axis, dtype=np.float64).astype(np.float32)


def rescore(scores: np.ndarray, image_features: np.ndarray, windows: Sequence[int]) -> np.ndarray:
    """3.4, RsCIN (the authors' MMO): min-max normalised ``scores`` (N,) smoothed over each
    image's ``k`` most similar images for each window ``k`` in ``windows``, then averaged over the
    windows. ``image_features`` (N, C) are unit vectors; their dot products are the similarities
    (negative ones count as 0). An empty ``windows`` or one holding 0 returns ``scores`` as they are."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(windows) or 0 in windows:
        return s.copy()
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    g = np.asarray(image_features, dtype=np.float64)
    w = np.clip(g @ g.T, 0.0, None)
    np.fill_diagonal(w, np.maximum(w.diagonal(), 1.0))  # an image is its own nearest neighbour
    n = len(s)
    out = np.zeros(n)
    for k in windows:
        k = min(int(k), n)
        keep = np.argpartition(-w, k - 1, axis=1)[:, :k]
        rows = np.arange(n)[:, None]
        wk = np.zeros_like(w)
        wk[rows, keep] = w[rows, keep]
        out += (wk @ norm) / wk.sum(1)
    return out / len(windows)
