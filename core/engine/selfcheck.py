"""A model's self-check: how well it separates synthetic defects from good parts it never saw,
before any real defect exists (issue 24, part 4).

After training, the held-out good images (those the threshold is calibrated on) are scored as
they are and with synthetic defects pasted in (:mod:`core.data.synthetic`: CutPaste rectangles
and Perlin blobs from another good image, at 4, 8 and 16 % of the shorter side). The
**self-check AUROC** is the AUROC of the good scores against all the synthetic ones; per size,
the AUROC of the good scores against that size's; the **smallest defect it separates** is the
smallest size whose AUROC reaches :data:`SEPARATES` (0.9). No defect label is ever used.

How well it predicts the real image AUROC is measured in docs/benchmarks.md ("Self-check"). It
is a floor on what the model can see of *this kind* of defect; a real defect unlike both kinds
(a subtle colour shift, a missing part) can still be missed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.data.images import ImageReadError, ImageSource
from core.data.synthetic import KINDS, SIZES, part_regions, synthetic_defect
from core.detectors.base import Detector
from core.metrics.auroc import auroc_from_split
from core.results.self_check import SEPARATES, SelfCheck
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn

#: at most this many held-out good images get synthetic defects (each gets one of every kind
#: and size: 6 images each); the good scores of all held-out images count
MAX_BASE = 20


def _decoded(images: ImageSource, limit: int, seed: int) -> list[np.ndarray]:
    """Up to ``limit`` readable images of ``images`` (a seeded choice when there are more)."""
    order = np.random.default_rng(seed).permutation(len(images)).tolist() if len(images) > limit else range(len(images))
    out = []
    for i in order:
        try:
            out.append(images[i])
        except ImageReadError:
            continue
        if len(out) >= limit:
            break
    return out


def run_self_check(detector: Detector, good: ImageSource, good_scores: Sequence[float], seed: int = 0,
                   progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> SelfCheck:
    """Score synthetic defects pasted into (up to :data:`MAX_BASE` of) the held-out good
    images ``good`` with the trained ``detector``; ``good_scores`` are the scores of those held-out
    images (already computed for the threshold)."""
    goods = np.array([s for s in good_scores if np.isfinite(s)], dtype=np.float64)
    base = _decoded(good, MAX_BASE, seed)
    if len(base) < 2 or goods.size < 2:
        return SelfCheck(None, {}, {}, None, int(goods.size), 0)
    # a few defects at a time, their images and maps dropped once scored (memory: test_selfcheck)
    n = len(base) * len(SIZES) * len(KINDS)
    chunk = detector.images_per_call()
    regions = part_regions(base)  # once, not for every defect drawn in or from an image
    scored: list[tuple[str, float, float]] = []  # (kind, size, score) of each finite-scored defect
    for start in range(0, n, chunk):
        check(cancel)
        defects = [synthetic_defect(base, k, seed, regions=regions) for k in range(start, min(n, start + chunk))]
        results = detector.score(ImageSource([d.image for d in defects]), None, cancel)
        scored += [(defects[i].kind, defects[i].size, r.score) for i, r in sorted(results.items())
                   if np.isfinite(r.score)]
        if progress:
            progress(min(n, start + chunk), n, f"scored {min(n, start + chunk)} of {n}")

    def auroc(kind: str | None = None, size: float | None = None) -> float | None:
        pos = np.array([s for k, z, s in scored if kind in (None, k) and size in (None, z)], dtype=np.float64)
        return auroc_from_split(pos, goods) if pos.size else None

    by_size = {f"{size:g}": auroc(size=size) for size in SIZES}
    by_kind = {kind: auroc(kind=kind) for kind in KINDS}
    separated = [size for size in SIZES if (by_size[f"{size:g}"] or 0.0) >= SEPARATES]
    return SelfCheck(auroc(), by_size, by_kind, min(separated) if separated else None,
                     int(goods.size), len(scored))
