"""Tests of core.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from core.metrics import (
    accuracy_recall,
    aupro,
    compute_all,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- image AUROC


@pytest.mark.parametrize("levels", [None, 7])  # continuous scores, then heavy ties
def test_image_auroc_matches_sklearn(
    rng: np.random.Generator, levels: int | None
) -> None:
    for _ in range(20):
        n = int(rng.integers(5, 300))
        labels = rng.integers(0, 2, n)
        labels[:2] = (0, 1)
        scores = rng.normal(size=n) + 0.7 * labels
        if levels is not None:
            scores = np.round(scores * levels / 4) / levels
        assert image_auroc(labels, scores) == pytest.approx(
            roc_auc_score(labels, scores), abs=1e-12
        )


def test_image_auroc_edge_cases() -> None:
    assert image_auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert image_auroc([1, 1], [0.1, 0.2]) is None
    assert image_auroc([], []) is None
    assert image_auroc([0, 1], [0.1, 0.9]) == 1.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    assert image_auroc(np.array([False, True]), [0.9, 0.1]) == 0.0
    with pytest.raises(ValueError):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        image_auroc([0, 1, 1], [0.1, 0.2])


# --------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_matches_sklearn_with_ties(rng: np.random.Generator) -> None:
    # Maps already at `size`: no resizing, so this is a pure check of the AUROC.
    masks = [rng.random((32, 32)) > 0.9 for _ in range(6)]
    masks[2][:] = False
    maps = [(rng.integers(0, 5, (32, 32)) + 2 * m).astype(np.float32) for m in masks]
    expected = roc_auc_score(
        np.concatenate([m.ravel() for m in masks]),
        np.concatenate([m.ravel() for m in maps]),
    )
    assert pixel_auroc(masks, maps, size=32) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_resizes_maps_bilinear_and_masks_nearest(
    rng: np.random.Generator,
) -> None:
    masks = [(rng.random((40, 50)) > 0.8).astype(np.uint8) * 255 for _ in range(3)]
    maps = [rng.random((13, 17)).astype(np.float32) for _ in range(3)]
    gt = [
        cv2.resize((m > 0).astype(np.uint8), (24, 24), interpolation=cv2.INTER_NEAREST)
        for m in masks
    ]
    up = [cv2.resize(a, (24, 24), interpolation=cv2.INTER_LINEAR) for a in maps]
    expected = roc_auc_score(
        np.concatenate([g.ravel() for g in gt]), np.concatenate([u.ravel() for u in up])
    )
    assert pixel_auroc(masks, maps, size=24) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_perfect_across_sizes() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:40, 8:32] = True
    small = cv2.resize(mask.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    assert pixel_auroc([mask, None], [small, np.zeros((16, 16))], size=32) == 1.0
    assert aupro([mask, None], [small, np.zeros((16, 16))], size=32) == pytest.approx(
        1.0
    )


def test_pixel_metrics_none_cases() -> None:
    zeros = [np.zeros((8, 8)), np.ones((8, 8))]
    assert pixel_auroc([None, None], zeros, size=8) is None  # no anomalous pixel
    assert aupro([None, None], zeros, size=8) is None
    full = [np.ones((8, 8), dtype=bool)]
    assert pixel_auroc(full, [np.ones((8, 8))], size=8) is None  # no normal pixel
    assert aupro(full, [np.ones((8, 8))], size=8) is None
    assert pixel_auroc([], [], size=8) is None
    assert aupro([], [], size=8) is None


# --------------------------------------------------------------------------- AUPRO


def _hand_case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two 4x4 images with one region each (see test_aupro_hand_computed)."""
    mask_a = np.zeros((4, 4), dtype=bool)
    mask_a[0:2, 0:2] = True  # region A: 4 pixels
    map_a = np.zeros((4, 4), dtype=np.float32)
    map_a[0, 0], map_a[0, 1], map_a[1, 0], map_a[1, 1] = 0.8, 0.8, 0.4, 0.0
    map_a[3, 3] = 0.7  # one false positive candidate
    mask_b = np.zeros((4, 4), dtype=bool)
    mask_b[2, 1:3] = True  # region B: 2 pixels
    map_b = np.zeros((4, 4), dtype=np.float32)
    map_b[2, 1], map_b[2, 2] = 0.6, 0.2
    map_b[0, 3] = 0.3
    return [mask_a, mask_b], [map_a, map_b]


def test_aupro_hand_computed() -> None:
    # 26 normal pixels (12 in A, 14 in B); all score 0 except 0.7 (in A) and 0.3 (in B).
    # Thresholds, descending (PRO = mean of the fractions of A and B reached):
    #   0.8: A 2/4, B 0/2 -> PRO 0.25,  FP 0 -> (0,     0.25)
    #   0.7: FP 1                       -> (1/26,  0.25)
    #   0.6: B 1/2       -> PRO 0.5            (1/26,  0.5)
    #   0.4: A 3/4       -> PRO 0.625          (1/26,  0.625)
    #   0.3: FP 2                       -> (2/26,  0.625)
    #   0.2: B 2/2       -> PRO 0.875          (2/26,  0.875)
    #   0.0: everything                 -> (1,     1)
    # Up to FPR 0.3: 0.25 * 1/26 + 0.625 * 1/26 on the flat parts, then a trapezoid
    # from (2/26, 0.875) to (0.3, p), p on the last segment, which runs to (1, 1):
    # p = 0.875 + 0.125 (0.3 - 2/26) / (24/26).
    p = 0.875 + 0.125 * (0.3 - 2 / 26) / (24 / 26)  # = 0.90520833...
    area = 0.875 / 26 + (0.3 - 2 / 26) * (0.875 + p) / 2
    expected = area / 0.3  # = 0.77405181...
    assert expected == pytest.approx(0.7740518162, abs=1e-9)

    masks, maps = _hand_case()
    assert aupro(masks, maps, size=4) == pytest.approx(expected, abs=1e-12)
    # With the full range the last segment runs to (1, 1): area = 0.875/26 + (24/26)(0.875 + 1)/2.
    assert aupro(masks, maps, size=4, fpr_limit=1.0) == pytest.approx(
        0.875 / 26 + (24 / 26) * 1.875 / 2, abs=1e-12
    )
    # A limit below the first false positive sees only the vertical jump to 0.625.
    assert aupro(masks, maps, size=4, fpr_limit=0.5 / 26) == pytest.approx(
        0.25, abs=1e-12
    )

    fpr, pro = pro_curve(masks, maps, size=4)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and fpr[-1] == 1.0 and pro[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15)


def test_aupro_good_images_and_unlabelled_defects() -> None:
    masks, maps = _hand_case()
    base = aupro(masks, maps, size=4)
    # A defective image without a mask is left out when labels are given...
    noisy = [masks[0], masks[1], None]
    noisy_maps = [*maps, np.full((4, 4), 5.0, dtype=np.float32)]
    assert aupro(noisy, noisy_maps, size=4, labels=[1, 1, 1]) == pytest.approx(
        base, abs=1e-12
    )
    # ...while a good image with mask None adds 16 normal pixels (here all scoring 0).
    with_good = aupro(
        [*masks, None], [*maps, np.zeros((4, 4))], size=4, labels=[1, 1, 0]
    )
    assert with_good != pytest.approx(base)
    # 42 normals: FP vertices at 1/42 and 2/42; last segment from (2/42, 0.875) to (1, 1).
    p = 0.875 + 0.125 * (0.3 - 2 / 42) / (40 / 42)
    expected = (0.875 / 42 + (0.3 - 2 / 42) * (0.875 + p) / 2) / 0.3
    assert with_good == pytest.approx(expected, abs=1e-12)


def test_aupro_uses_8_connectivity() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = (
        True  # diagonal neighbours: one region with 8-connectivity
    )
    mask[4, 3:5] = True
    amap = np.where(mask, 0.5, 0.0).astype(np.float32)
    amap[0, 0] = 1.0
    fpr, pro = pro_curve([mask], [amap], size=6)
    # At threshold 1: one of two pixels of region 1, none of region 2 -> (0.5 + 0) / 2.
    assert pro[2] == pytest.approx(0.25) and fpr[2] == 0.0


def test_aupro_perfect_and_random(rng: np.random.Generator) -> None:
    masks = []
    for _ in range(8):
        m = np.zeros((64, 64), dtype=np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, 56, 2)
            m[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = 255
        masks.append(m)
    perfect = [
        m.astype(np.float32) / 255 + rng.random() * 0.1 for m in masks
    ]  # uniform offsets
    assert aupro(
        masks, [m.astype(np.float32) for m in masks], size=64
    ) == pytest.approx(1.0)
    assert aupro(masks, perfect, size=64) > 0.9
    random_maps = [rng.random((64, 64)).astype(np.float32) for _ in masks]
    value = aupro(masks, random_maps, size=64)
    assert (
        value is not None and 0.1 < value < 0.2
    )  # PRO ~ FPR: area ~ 0.3^2 / 2 / 0.3 = 0.15
    with pytest.raises(ValueError):
        aupro(masks, random_maps, fpr_limit=0.0)


# --------------------------------------------------------------------------- F1 max


@pytest.mark.parametrize("levels", [None, 5])
def test_f1_max_matches_sklearn(rng: np.random.Generator, levels: int | None) -> None:
    for _ in range(20):
        n = int(rng.integers(3, 200))
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        scores = rng.normal(size=n) + labels
        if levels is not None:
            scores = np.round(scores * levels / 4) / levels
        precision, recall, _ = precision_recall_curve(labels, scores)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        assert f1_max(labels, scores) == pytest.approx(f1.max(), abs=1e-12)


def test_f1_max_edge_cases() -> None:
    assert f1_max([0, 0], [0.2, 0.4]) is None
    assert f1_max([], []) is None
    assert f1_max([0, 1, 1], [0.1, 0.8, 0.9]) == 1.0
    assert f1_max([1, 1], [0.3, 0.3]) == 1.0
    # One positive ranked below two negatives: best is predicting all -> 2*1 / (3 + 1).
    assert f1_max([0, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- decisions


def test_accuracy_recall() -> None:
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    predicted = [0, 1, 0, 1, 1, 0, 1, 0]
    accuracy, recall = accuracy_recall(labels, predicted)
    assert accuracy == pytest.approx(6 / 8) and recall == pytest.approx(3 / 4)
    assert accuracy_recall([0, 0], [0, 1]) == (0.5, None)
    assert accuracy_recall(np.array([True]), np.array([True])) == (1.0, 1.0)
    assert accuracy_recall([], []) == (None, None)
    with pytest.raises(ValueError):
        accuracy_recall([0, 1], [1])


# --------------------------------------------------------------------------- compute_all


KEYS = {"image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall"}


def test_compute_all() -> None:
    masks, maps = _hand_case()
    labels = [1, 1, 0, 1]
    scores = [0.9, 0.8, 0.1, 0.5]
    predicted = [1, 1, 0, 0]
    all_masks = [
        *masks,
        None,
        None,
    ]  # a good image, then a defective one without a mask
    all_maps = [*maps, np.zeros((8, 8), np.float32), np.ones((4, 4), np.float32)]
    result = compute_all(labels, scores, predicted, all_masks, all_maps, size=4)
    assert set(result) == KEYS
    assert result["image_auroc"] == 1.0 and result["f1_max"] == 1.0
    assert result["accuracy"] == 0.75 and result["recall"] == pytest.approx(2 / 3)
    assert result["aupro"] == pytest.approx(
        aupro([*masks, None], [*maps, np.zeros((4, 4))], size=4), abs=1e-12
    )
    gt = np.concatenate([m.ravel() for m in masks] + [np.zeros(16, bool)])
    sc = np.concatenate([m.ravel() for m in maps] + [np.zeros(16)])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(gt, sc), abs=1e-12)


def test_compute_all_not_applicable() -> None:
    result = compute_all([0, 1], [0.2, 0.4], None, None, None)
    assert set(result) == KEYS
    assert result["image_auroc"] == 1.0
    assert result["pixel_auroc"] is None and result["aupro"] is None
    assert result["accuracy"] is None and result["recall"] is None
    maps = [np.zeros((4, 4)), np.ones((4, 4))]
    no_masks = compute_all([0, 1], [0.2, 0.4], [0, 1], [None, None], maps, size=4)
    assert no_masks["pixel_auroc"] is None and no_masks["aupro"] is None
    assert no_masks["accuracy"] == 1.0 and no_masks["recall"] == 1.0
    one_class = compute_all([0, 0], [0.2, 0.4], [0, 1], [None, None], maps, size=4)
    assert one_class["image_auroc"] is None and one_class["f1_max"] is None
    assert one_class["recall"] is None and one_class["accuracy"] == 0.5


def test_metrics_do_not_import_torch_or_qt() -> None:
    code = (
        "import sys, core.metrics; "
        "bad = [m for m in ('torch', 'PySide6', 'pyqtgraph', 'sklearn') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or 0)"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr
