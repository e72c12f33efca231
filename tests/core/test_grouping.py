"""Grouping a batch by its scores: normalized cut (hand-checked), k-means, GMM, clear errors,
and the scan-level helpers (group column, regroup, moves by hand, export)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.grouping import METHODS, Grouping, GroupingError, group_scores
from core.grouping.ncut import ncut_value, normalized_cut, similarity
from core.io.export import results_csv
from core.results import ScanResult, ScanRow, apply_grouping, move_to_group, regroup


def test_ncut_hand_checked_two_pairs():
    # Scores 0, 0, 1, 1 with sigma = 1: within-pair weight (self-loops too) exp(0) = 1, across
    # exp(-1/2) = a. Cutting between the pairs: cut = 4a, assoc(A, V) = assoc(B, V) = 2 (2 + 2a)
    # -> Ncut = 2 * 4a / (4 + 4a) = 2a / (1 + a).
    g = group_scores([0.0, 0.0, 1.0, 1.0], "ncut", sigma=1.0)
    a = math.exp(-0.5)
    assert g.cut_value == pytest.approx(2 * a / (1 + a))
    assert list(g.labels) == [0, 0, 1, 1]  # a tie in size: the higher scores are suspect
    assert g.sizes == (2, 2)


def test_ncut_splits_two_well_separated_clusters():
    scores = [0.10, 0.12, 0.11, 0.95, 0.13, 1.02, 0.09, 0.98, 0.12]
    g = group_scores(scores, "ncut")
    assert [i for i, lab in enumerate(g.labels) if lab] == [3, 5, 7]  # the smaller, high cluster
    assert g.sizes == (6, 3) and g.method == "ncut"
    assert 0 <= g.cut_value < 0.05  # almost nothing joins the two clusters


def test_ncut_cuts_off_a_single_outlier():
    # With self-loops an isolated image costs almost nothing to cut: Ncut ~ 0, not >= 1.
    g = group_scores([0.10, 0.11, 0.12, 0.90, 0.10], "ncut")
    assert list(g.labels) == [0, 0, 0, 1, 0] and g.cut_value < 0.01


def test_larger_cluster_is_normal_even_when_it_scores_higher():
    # The paper's rule is by size, not by score: the two low scores are the suspect minority.
    g = group_scores([5.0, 5.1, 4.9, 5.05, 0.0, 0.1], "ncut")
    assert list(g.labels) == [0, 0, 0, 0, 1, 1]


def test_ncut_value_matches_definition_and_split_is_the_minimum():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, 7), rng.normal(6, 1, 5)][:, None]
    labels, value = normalized_cut(x)
    w = similarity(x)
    assert value == pytest.approx(ncut_value(w, labels == 0))
    order = np.argsort(x[:, 0])
    for k in range(1, len(x)):  # no threshold split along the scores cuts cheaper here
        in_a = np.zeros(len(x), bool)
        in_a[order[:k]] = True
        assert ncut_value(w, in_a) >= value - 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_every_method_separates_clear_clusters(method):
    rng = np.random.default_rng(3)
    scores = np.r_[rng.normal(1.0, 0.05, 30), rng.normal(3.0, 0.1, 8)]
    g = group_scores(scores, method)
    assert list(g.labels) == [0] * 30 + [1] * 8
    assert (g.cut_value is not None) == (method == "ncut")


@pytest.mark.parametrize("method", METHODS)
def test_score_vectors_are_grouped_too(method):
    x = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05], [5, 5], [5.1, 4.9]])
    assert list(group_scores(x, method).labels) == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("scores, message", [
    ([], "empty"),
    ([0.3], "at least 2 images"),
    ([0.1, float("nan"), 0.2], "not finite"),
])
def test_batches_that_cannot_be_grouped_say_why(scores, message):
    with pytest.raises(GroupingError, match=message):
        group_scores(scores)


def test_unknown_method_and_identical_scores():
    with pytest.raises(GroupingError, match="unknown grouping method 'spectral'"):
        group_scores([1, 2], "spectral")
    g = group_scores([0.5, 0.5, 0.5])
    assert g.sizes == (3, 0) and g.cut_value is None  # nothing to cut


@pytest.mark.parametrize("method", METHODS)
def test_identical_scores_are_one_normal_group_for_every_method_without_warnings(method, recwarn):
    g = group_scores([0.5, 0.5, 0.5, 0.5], method)
    assert g.sizes == (4, 0) and g.method == method
    assert not [w for w in recwarn if "cluster" in str(w.message).lower()]  # no sklearn ConvergenceWarning


def _result(scores) -> ScanResult:
    rows = [ScanRow(Path(f"p{i}.png"), s, None, (8, 8)) for i, s in enumerate(scores)]
    return ScanResult("ldm-zero-shot", rows, [], None)


def test_regroup_move_and_export_follow_the_groups():
    res = _result([0.1, 0.11, 0.12, 0.9, 0.1])
    g = regroup(res, "ncut")
    assert [r.columns["group"] for r in res.rows] == ["normal"] * 3 + ["suspect", "normal"]
    assert [r.flagged for r in res.rows] == [False, False, False, True, False]
    move_to_group(res, 1, "suspect")
    assert res.rows[1].flagged and res.rows[1].columns["group"] == "suspect" and g.moved == [1]
    assert res.grouping.sizes == (3, 2) and "1 moved by hand" in res.grouping.describe()
    csv = results_csv(res.rows).splitlines()
    assert csv[0] == "path,score,flagged,group" and csv[2].endswith("true,suspect")
    move_to_group(res, 1, "normal")  # back where the algorithm put it
    assert g.moved == [] and not res.rows[1].flagged
    res.apply_threshold(None)  # a grouped result keeps flagging its suspect group
    assert [r.flagged for r in res.rows] == [False, False, False, True, False]
    regroup(res, "kmeans")
    assert res.grouping.method == "kmeans" and res.grouping.cut_value is None


def test_move_needs_a_grouped_scan_and_a_known_group():
    res = _result([0.1, 0.2])
    with pytest.raises(GroupingError, match="no groups"):
        move_to_group(res, 0, "suspect")
    apply_grouping(res, Grouping(np.array([0, 1], np.int8), "ncut", 0.1))
    with pytest.raises(ValueError, match="normal, suspect"):
        move_to_group(res, 0, "odd")
    with pytest.raises(IndexError):
        move_to_group(res, 5, "normal")
