"""ROC / precision-recall points and the threshold reaching a chosen recall."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics.curves import threshold_for_recall, verdict_curves


def test_curves_match_a_hand_count():
    labels = [0, 0, 1, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    c = verdict_curves(labels, scores)
    assert list(c.thresholds) == [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert list(c.tpr) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert list(c.fpr) == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert list(c.precision) == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5, 1 / 2])
    assert verdict_curves([1, 1], [0.1, 0.2]) is None  # one class only


def test_ties_make_one_point():
    c = verdict_curves([0, 1, 1], [0.5, 0.5, 0.9])
    assert list(c.thresholds) == [0.9, 0.5] and list(c.fpr) == [0, 1]


def test_threshold_for_recall():
    labels = [0, 0, 1, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    r = threshold_for_recall(labels, scores, 1.0)  # must catch 0.3: halfway to 0.2
    assert r.threshold == pytest.approx(0.25) and r.recall == 1.0 and r.fpr == pytest.approx(1 / 3)
    r = threshold_for_recall(labels, scores, 0.6)  # 2 of 3: catch 0.5, halfway to 0.4
    assert r.threshold == pytest.approx(0.45) and r.recall == pytest.approx(2 / 3) and r.fpr == 0.0
    assert threshold_for_recall([0, 0], [0.1, 0.2], 0.9) is None
    r = threshold_for_recall([1], [0.3], 1.0)  # nothing below: just under it
    assert r.threshold < 0.3 and r.recall == 1.0
    with pytest.raises(ValueError):
        threshold_for_recall(labels, scores, 0.0)
    # every asked recall is reached, on random data
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.random(200) + y * 0.3
    for want in (0.5, 0.8, 0.95, 1.0):
        got = threshold_for_recall(y, s, want)
        assert got.recall >= want and (s[y] > got.threshold).mean() == got.recall


def test_curves_auroc_is_the_image_auroc_of_the_same_labels():
    from core.metrics import image_auroc

    rng = np.random.default_rng(7)
    labels = [0] * 30 + [1] * 12
    scores = list(rng.normal(0, 1, 30)) + list(rng.normal(1.2, 1, 12))
    scores[3] = scores[35]  # a tie between an OK and an NG image
    assert verdict_curves(labels, scores).auroc == pytest.approx(image_auroc(labels, scores))
