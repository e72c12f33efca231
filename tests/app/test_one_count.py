"""Issue 26, part 2: one source for every count.

A scripted review (drag, reset, band, verdicts, ROC threshold, "this one is normal", re-run,
restart) checking after each step that every count on screen — the gallery header, the
histogram's "flagged", the review counters, the ≠ marks — equals what ``report`` and
``export`` say of the same session.
"""

from __future__ import annotations

import csv
import re

from PySide6.QtCore import Qt

from app.gallery import DisagreeRole
from core.session import open_session
from core.session.export import export_session
from core.session.report import build_report
from tests.app.conftest import make_window, open_folder, scan, wait_idle


def window_counts(win) -> dict:
    """What the window shows, read off its widgets."""
    m = win.gallery.model
    header = win.gallery.count_label.text()
    flagged_header = int(re.search(r"(\d+) flagged", header).group(1))
    hist = re.match(r"flagged: (\d+) / (\d+)", win.histogram.count_label.text())
    review = re.match(r"reviewed (\d+) / (\d+), (\d+) disagree", win.review_counters())
    marks = sum(bool(m.index(i).data(DisagreeRole)) for i in range(m.rowCount()))  # the ≠ marks drawn
    return {"flagged": {flagged_header, int(hist.group(1))}, "images": int(hist.group(2)),
            "reviewed": int(review.group(1)), "review_total": int(review.group(2)),
            "disagree": {int(review.group(3)), marks}}


def session_counts(path, run_id, out) -> dict:
    """What ``report`` and ``export`` say of the same run."""
    with open_session(path, mode="ro") as s:
        html = build_report(s, run_id)
        export_session(s, out, run_id, heatmaps=False)
    card = {k: int(v) for v, k in re.findall(r'<div class="card[^"]*"><b>(\d+)</b><span>([^<]+)</span>', html)}
    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"report": card, "export": {"flagged": sum(r["flagged"] == "true" for r in rows),
                                       "disagree": sum(r["disagrees"] == "true" for r in rows),
                                       "reviewed": sum(bool(r["verdict"]) for r in rows), "images": len(rows)}}


def check(win, tmp_path, step: str) -> None:
    c = win.controller
    shown = window_counts(win)
    got = session_counts(c.session.path, c.run_id, tmp_path / f"export-{step}")
    report, export = got["report"], got["export"]
    flagged = next(n for k, n in report.items() if k.startswith("flagged"))
    assert shown["flagged"] == {flagged} == {export["flagged"]}, (step, shown, report, export)
    assert shown["images"] == report["images"] == export["images"], step
    assert shown["reviewed"] == report["reviewed"] == export["reviewed"], (step, shown, report, export)
    assert shown["review_total"] == report["reviewed"] + report["to review"], (step, shown, report)
    assert shown["disagree"] == {report["disagree"]} == {export["disagree"]}, (step, shown, report, export)


def test_scripted_review_counts_agree_everywhere_across_a_restart(qtbot, settings, parts, tmp_path):
    win = make_window(qtbot, settings)
    open_folder(qtbot, win, parts.batch)
    scan(qtbot, win, good=parts.good)
    c, h = win.controller, win.histogram
    check(win, tmp_path, "scanned")
    rows = sorted(c.result.rows, key=lambda r: r.score)
    scores = [r.score for r in rows]

    # drag the threshold line on the histogram and drop it between two scores
    h.line.setValue(h._to_axis((scores[2] + scores[3]) / 2))
    h.line.sigPositionChangeFinished.emit(h.line)
    check(win, tmp_path, "dragged")
    h.reset_button.click()
    check(win, tmp_path, "reset")

    # a review band and verdicts, two of them contradicting the detector
    assert c.set_review_band(scores[1], scores[-3])
    check(win, tmp_path, "band")
    for r, v in ((rows[-1], "ng"), (rows[-2], "ok"), (rows[0], "ng"), (rows[1], "unsure"), (rows[2], "ok")):
        win.gallery.select_path(r.path)
        assert win.set_verdict(v)
    check(win, tmp_path, "verdicts")

    # the threshold from the ROC of the verdicts
    dlg = win.show_curves()
    dlg.recall.setValue(1.0)
    assert dlg.apply_button.isEnabled()
    dlg.apply_button.click()
    check(win, tmp_path, "roc")

    # "this one is normal" on the image the inspector called OK although it was flagged
    h.reset_button.click()
    win.gallery.select_path(rows[-2].path)
    assert win.mark_normal()
    check(win, tmp_path, "normal")

    # the same model again: a new run of the session
    assert win.run_detector()
    qtbot.waitUntil(lambda: not c.busy and c.result is not None, timeout=30000)
    wait_idle(qtbot, c)
    check(win, tmp_path, "rerun")

    # a restart: the same counts from the session alone
    win.close()
    win2 = make_window(qtbot, settings)
    open_folder(qtbot, win2, parts.batch)
    qtbot.waitUntil(lambda: win2.controller.result is not None, timeout=15000)
    wait_idle(qtbot, win2.controller)
    check(win2, tmp_path, "restart")
    assert win2.gallery.model.index(0).data(Qt.DisplayRole)
