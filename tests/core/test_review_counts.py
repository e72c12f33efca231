"""core.results.review: the one function of every count (issue 26, part 2)."""

from __future__ import annotations

from pathlib import Path

from core.results import ScanRow
from core.results.review import ReviewBand, review_counts


def rows(*scores, group=None):
    return [ScanRow(Path(f"/b/{i}.png"), s, None, (8, 8), columns={} if group is None else {"group": group[i]})
            for i, s in enumerate(scores)]


def test_counts_flags_band_verdicts_and_the_walk():
    rs = rows(1.0, 2.0, 3.0, 4.0, 5.0)
    verdicts = {Path("/b/4.png"): "ok", "/b/0.png": "ng", "/b/1.png": "unsure"}
    c = review_counts(rs, 3.5, ReviewBand(1.5, 4.5), verdicts)
    assert c.n_flagged == 2 and c.flags["/b/3.png"] and not c.flags["/b/2.png"]
    assert c.zones == {"pass": 1, "review": 3, "fail": 1}
    assert c.reviewed == 3 and c.verdicts == {"ok": 1, "ng": 1, "unsure": 1}
    # OK on a flagged image and NG on a passed one disagree; unsure never does
    assert c.disagreeing == {"/b/4.png", "/b/0.png"} and c.disagree == 2
    # unreviewed and flagged or in the review zone, highest score first
    assert c.queue == (Path("/b/3.png"), Path("/b/2.png")) and c.to_review == 2
    assert c.describe() == "reviewed 3 / 5, 2 disagree" and c.band_warning == ""


def test_a_threshold_outside_the_band_is_a_warning():
    assert "below the review band" in review_counts(rows(1.0, 2.0), 0.5, ReviewBand(1.0, 3.0), {}).band_warning
    assert "above the review band" in review_counts(rows(1.0, 2.0), 9.0, ReviewBand(1.0, 3.0), {}).band_warning
    assert review_counts(rows(1.0), 0.5, None, {}).band_warning == ""


def test_a_grouped_run_is_flagged_by_its_groups_not_a_threshold():
    rs = rows(1.0, 2.0, 3.0, group=["normal", "suspect", "normal"])
    c = review_counts(rs, None, None, {"/b/1.png": "ok"})
    assert c.n_flagged == 1 and c.flags["/b/1.png"] and c.disagreeing == {"/b/1.png"}
    assert review_counts(rows(1.0, 2.0), None, None, {}).flags == {"/b/0.png": None, "/b/1.png": None}
