"""Area under the per-region-overlap (PRO) curve.

Bergmann et al., "The MVTec Anomaly Detection Dataset: A Comprehensive Real-World
Dataset for Unsupervised Anomaly Detection", IJCV 129(4), 2021, evaluation-metric
section (PRO was introduced in Bergmann et al., "Uninformed Students", CVPR 2020),
as in the official MVTec AD evaluation code. Every connected component
(8-connectivity) of a ground-truth mask is a region; at a threshold the PRO is the
mean, over all regions, of the fraction of the region's pixels whose score reaches
the threshold, and the false-positive rate is taken over all normal pixels of all
images. The PRO curve is integrated over
FPR in [0, fpr_limit] and divided by ``fpr_limit``, so a perfect detector gets 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.metrics.pixel import prepare_pixels

__all__ = ["aupro", "pro_curve"]


def pro_curve(
    masks: Sequence[NDArray | None] | None,
    maps: Sequence[NDArray | None],
    size: int = 256,
    labels: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Vertices ``(fpr, pro)`` of the piecewise-linear PRO curve, from (0, 0) to (1, 1).

    Inputs as for :func:`aupro`. ``None`` if there is no region or no normal pixel.

    The curve through one point per distinct score (all pixels >= threshold) is flat
    between two consecutive distinct region-pixel scores ``v' > v``; so two vertices per
    region score are enough: (FPR(> v), PRO(v')) ending the flat part, then
    (FPR(>= v), PRO(v)). This needs a sort of the normal pixels only, not an argsort
    of every pixel.
    """
    pairs = prepare_pixels(masks, maps, size, labels)
    normal_parts: list[NDArray[np.float32]] = []
    region_scores: list[NDArray[np.float32]] = []
    region_ids: list[NDArray[np.int64]] = []
    n_regions = 0
    for gt, amap in pairs:
        normal_parts.append(amap[~gt])
        if not gt.any():
            continue
        count, comp = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
        region_scores.append(amap[gt])
        region_ids.append(comp[gt].astype(np.int64) + (n_regions - 1))  # ids from 0
        n_regions += count - 1
    normal = (
        np.sort(np.concatenate(normal_parts))
        if normal_parts
        else np.empty(0, np.float32)
    )
    if n_regions == 0 or normal.size == 0:
        return None
    if not np.isfinite(normal).all():
        raise ValueError("anomaly maps must be finite (no NaN or inf)")

    scores = np.concatenate(region_scores)
    ids = np.concatenate(region_ids)
    if not np.isfinite(scores).all():
        raise ValueError("anomaly maps must be finite (no NaN or inf)")
    # A region pixel adds 1 / (n_regions * |region|) to the PRO once it reaches the threshold.
    weight = 1.0 / (
        n_regions * np.bincount(ids, minlength=n_regions).astype(np.float64)
    )
    order = np.argsort(scores)[::-1]  # descending; order within ties does not matter
    scores = scores[order]
    pro = np.cumsum(weight[ids[order]])
    last = np.append(
        np.flatnonzero(np.diff(scores) != 0), scores.size - 1
    )  # end of each tie run
    thresholds, pro = scores[last], np.minimum(pro[last], 1.0)

    n_normal = normal.size
    fpr_above = (
        n_normal - np.searchsorted(normal, thresholds, side="right")
    ) / n_normal
    fpr_reach = (n_normal - np.searchsorted(normal, thresholds, side="left")) / n_normal
    fpr = np.empty(2 * thresholds.size + 2)
    pro_values = np.empty_like(fpr)
    fpr[0], pro_values[0] = 0.0, 0.0
    fpr[1:-1:2], pro_values[1:-1:2] = fpr_above, np.concatenate(([0.0], pro[:-1]))
    fpr[2:-1:2], pro_values[2:-1:2] = fpr_reach, pro
    fpr[-1], pro_values[-1] = (
        1.0,
        1.0,
    )  # lowest threshold: every pixel (kills rounding in pro)
    return fpr, pro_values


def aupro(
    masks: Sequence[NDArray | None] | None,
    maps: Sequence[NDArray | None],
    size: int = 256,
    fpr_limit: float = 0.3,
    labels: ArrayLike | None = None,
) -> float | None:
    """Normalised area under the PRO curve for FPR in [0, ``fpr_limit``] (1.0 = perfect).

    ``masks``: H x W bool/uint8 ground truth per image, ``None`` = all normal (but an
    image labelled 1 in ``labels`` with no mask is left out); ``maps``: H x W anomaly
    maps of any size. Both are resized to ``size`` x ``size`` as for pixel AUROC.
    ``None`` if there is no anomalous region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    curve = pro_curve(masks, maps, size, labels)
    if curve is None:
        return None
    fpr, pro = curve

    # Vertices with fpr <= limit, then the curve interpolated at exactly fpr_limit.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:k], pro[:k]
    if x[-1] < fpr_limit:  # then fpr[k - 1] < fpr_limit < fpr[k] (fpr ends at 1)
        t = (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.append(x, fpr_limit)
        y = np.append(y, pro[k - 1] + t * (pro[k] - pro[k - 1]))
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1])) * 0.5)
    return area / fpr_limit
