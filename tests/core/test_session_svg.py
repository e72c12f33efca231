"""The report's inline SVG charts."""

import numpy as np

from core.metrics import image_auroc
from core.session.svg import histogram_svg, roc_points, roc_svg


def test_roc_points_match_the_auroc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    s[:10] = np.round(s[:10])  # ties
    fpr, tpr, thr = roc_points(y, s)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert abs(np.trapezoid(tpr, fpr) - image_auroc(y, s)) < 1e-9


def test_histogram_draws_threshold_band_and_verdict_ticks():
    svg = histogram_svg([1.0, 2.0, 2.5, 3.0, 8.0], threshold=2.7, band=(2.2, 4.0), marks={"ng": [8.0], "ok": [1.0]})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "threshold 2.7" in svg and "pass ≤ 2.2" in svg and "fail > 4" in svg
    assert svg.count('stroke="#c0392b" stroke-width="1.5"') == 1  # one NG tick
    assert "(log scale)" not in svg
    assert "no scores" in histogram_svg([float("nan")])
    assert histogram_svg([5.0]).startswith("<svg")  # one score, nothing else: no crash


def test_a_few_huge_scores_switch_the_axis_to_log():
    rng = np.random.default_rng(1)
    scores = list(rng.random(80)) + [400.0, 450.0]
    assert "(log scale)" in histogram_svg(scores, threshold=0.9)


def test_roc_svg_marks_the_threshold():
    svg = roc_svg([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5, auroc=0.75)
    assert "AUROC 0.750" in svg and "TPR 0.500, FPR 0.000" in svg
