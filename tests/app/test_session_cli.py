"""CLI parity for sessions: ``scan --session``, ``report`` and ``export``."""

from __future__ import annotations

import csv
import json
import re

import numpy as np

from app.cli import main
from core.session import default_session_path, open_session
from tests.conftest import make_part, write_png

SMALL = ["--set", "image_size=16", "--set", "blur_sigma=1"]


def _scan(tiny_parts, tmp_path, out="out", session="s.db", extra=()):
    return main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"),
                 "--out", str(tmp_path / out), "--session", str(tmp_path / session), "--device", "cpu", *SMALL,
                 *extra])


def _rows(path):
    return list(csv.DictReader(open(path, newline="")))


def test_scan_into_a_session_reuses_scores_and_still_writes_every_image(tiny_parts, tmp_path, capsys):
    assert _scan(tiny_parts, tmp_path, "a") == 0
    assert "run 1, 8 new, 0 reused" in capsys.readouterr().err
    assert _scan(tiny_parts, tmp_path, "b") == 0  # the same model is trained again: same weights, reused
    assert "run 2, 0 new, 8 reused" in capsys.readouterr().err
    assert _rows(tmp_path / "a" / "results.csv") == _rows(tmp_path / "b" / "results.csv")
    write_png(tiny_parts / "batch" / "late.png", make_part(np.random.default_rng(9), defect=True))
    assert _scan(tiny_parts, tmp_path, "c") == 0
    assert "run 3, 1 new, 8 reused" in capsys.readouterr().err
    assert len(_rows(tmp_path / "c" / "results.csv")) == 9
    assert sorted(p.name for p in (tmp_path / "c" / "heatmaps").iterdir()) == sorted(
        p.stem + ".png" for p in (tiny_parts / "batch").iterdir())


def test_scan_session_usage_errors(tiny_parts, tmp_path, capsys):
    assert _scan(tiny_parts, tmp_path) == 0
    capsys.readouterr()
    holder = open_session(tmp_path / "s.db")
    try:
        assert _scan(tiny_parts, tmp_path) == 2
        assert re.search(r"s\.db is open for writing by .* \(process \d+", capsys.readouterr().err)
    finally:
        holder.close()
    other = tmp_path / "other"
    write_png(other / "x.png", make_part(np.random.default_rng(1)))
    code = main(["scan", str(other), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"),
                 "--out", str(tmp_path / "o"), "--session", str(tmp_path / "s.db"), "--device", "cpu", *SMALL])
    assert code == 2 and "belongs to the folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before training and scanning


def test_report_is_one_self_contained_html_file(tiny_parts, tmp_path, capsys):
    assert _scan(tiny_parts, tmp_path) == 0
    with open_session(tmp_path / "s.db") as s:
        run = s.run()
        res = s.load_run()
        flagged = [r.path for r in res.rows if r.flagged]
        calm = [r.path for r in res.rows if not r.flagged]
        s.set_verdict(flagged[0], "ok")  # disagrees with the flag
        s.set_note(flagged[0], "<b>glare</b>, not a defect")
        s.set_verdict(flagged[1], "ng")
        s.set_verdict(calm[0], "ok")
        s.set_review_band(run.id, 0.5 * s.threshold_value(run.id), 2.0 * s.threshold_value(run.id))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html")]) == 0
    assert "reviewed 3 /" in capsys.readouterr().err
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing outside the file
    assert html.count("data:image/jpeg;base64,") >= 2 * len(flagged)  # image and overlay per row
    charts = html.count("<svg") - html.count('class="colorbar"')  # the histogram and the ROC; the heat maps' colour bar
    assert charts == 2 and "ROC from the inspector" in html and "AUROC" in html
    assert "threshold " in html and "review band" in html and "pass ≤" in html
    assert "&lt;b&gt;glare&lt;/b&gt;, not a defect" in html and "disagrees" in html
    with open_session(tmp_path / "s.db", mode="ro") as s:
        assert s.run().fingerprint in html
    assert main(["report", str(tmp_path / "missing.db"), "--out", str(tmp_path / "x.html")]) == 2
    assert "session not found" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "x.html"), "--run", "7"]) == 2
    assert "no run 7" in capsys.readouterr().err


def test_report_without_verdicts_says_why_there_is_no_roc(tiny_parts, tmp_path):
    assert _scan(tiny_parts, tmp_path) == 0
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html"), "-q"]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No ROC" in html and html.count("<svg") - html.count("class=\"colorbar\"") == 1


def test_report_of_a_session_whose_images_are_elsewhere_shows_the_heat_maps(tiny_parts, tmp_path):
    assert _scan(tiny_parts, tmp_path) == 0
    for p in (tiny_parts / "batch").iterdir():
        p.unlink()  # scanned on the server, reported at the desk without the images
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html"), "-q"]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "image not readable here" in html and "data:image/jpeg;base64," in html


def test_export_carries_verdicts_and_provenance(tiny_parts, tmp_path):
    assert _scan(tiny_parts, tmp_path) == 0
    with open_session(tmp_path / "s.db") as s:
        first = s.load_run().rows[0]
        s.set_verdict(first.path, "ng")
        s.set_note(first.path, "dent")
        fingerprint = s.run().fingerprint
    assert main(["export", str(tmp_path / "s.db"), "--out", str(tmp_path / "exp"), "-q"]) == 0
    rows = _rows(tmp_path / "exp" / "results.csv")
    assert len(rows) == 8
    row = next(r for r in rows if r["path"] == str(first.path))
    assert row["verdict"] == "ng" and row["note"] == "dent" and row["verdict_by"]
    assert row["disagrees"] == ("false" if first.flagged else "true")
    assert all(r["model_fingerprint"] == fingerprint and r["detector"] == "pixel-gaussian" and r["run"] == "1"
               for r in rows)
    assert all(r["threshold_calibration"].startswith("threshold ") for r in rows)
    prov = json.loads((tmp_path / "exp" / "provenance.json").read_text())
    assert prov["model_fingerprint"] == fingerprint and prov["images_new"] == 8
    flagged = (tmp_path / "exp" / "flagged.txt").read_text().split()
    assert flagged == [r["path"] for r in rows if r["flagged"] == "true"]
    assert len(list((tmp_path / "exp" / "heatmaps").iterdir())) == 8


def test_a_folder_stands_for_its_default_session(tiny_parts, tmp_path, capsys):
    folder = tiny_parts / "batch"
    assert main(["export", str(folder), "--out", str(tmp_path / "e")]) == 2
    assert "without a session" in capsys.readouterr().err
    code = main(["scan", str(folder), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"), "-q",
                 "--out", str(tmp_path / "o"), "--session", str(default_session_path(folder)), "--device", "cpu",
                 *SMALL])
    assert code == 0
    assert main(["export", str(folder), "--out", str(tmp_path / "e"), "--no-heatmaps", "-q"]) == 0
    assert len(_rows(tmp_path / "e" / "results.csv")) == 8 and not (tmp_path / "e" / "heatmaps").exists()
