"""Issue 27: sessions, resume and exports under hostile input (findings 1-5, 8-10, 13-15 through
the command line; 6, 7, 11 and 12 have their own tests in tests/core and tests/app)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from core.session import open_session
from tests.conftest import make_part, write_png

SMALL = ["--set", "image_size=16", "--set", "blur_sigma=1"]
POSIX_NAMES = pytest.mark.skipif(os.name != "posix" or os.uname().sysname == "Darwin",
                                 reason="non-UTF-8 names need a POSIX file system")


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def scan(batch, good, out, session, *extra):
    return main(["scan", str(batch), "--detector", "pixel-gaussian", "--train", str(good), "--out", str(out),
                 "--session", str(session), "--device", "cpu", *SMALL, "-q", *extra])


# ----------------------------------------------------------------------------- whole runs lost
@POSIX_NAMES
def test_finding1_non_utf8_name_in_a_session_scan_report_and_export(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    with open(os.path.join(os.fsencode(batch), b"x\xff.png"), "wb") as fh:
        fh.write((batch / "bad0.png").read_bytes())
    assert scan(batch, tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    assert any(r["path"].endswith("x\\xff.png") for r in rows(tmp_path / "out" / "results.csv"))
    with open_session(tmp_path / "s.db") as s:
        res = s.load_run()
        odd = next(r.path for r in res.rows if os.fsencode(r.path).endswith(b"x\xff.png"))
        assert odd.exists()  # the stored name finds the file again, byte for byte
        s.set_verdict(odd, "ng")
        s.set_note(odd, "dent")
    # the second run reuses the stored score of the odd name too
    assert scan(batch, tiny_parts / "good", tmp_path / "out2", tmp_path / "s.db") == 0
    with open_session(tmp_path / "s.db", mode="ro") as s:
        assert s.run().n_reused == 9 and s.verdicts()[odd].value == "ng"
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html"), "-q"]) == 0
    assert "x\\xff.png" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert main(["export", str(tmp_path / "s.db"), "--out", str(tmp_path / "exp"), "-q"]) == 0
    exported = {r["path"]: r for r in rows(tmp_path / "exp" / "results.csv")}
    assert next(r for p, r in exported.items() if p.endswith("x\\xff.png"))["verdict"] == "ng"


def test_finding2_a_nan_score_is_skipped_in_a_session_scan(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    cv2.imwrite(str(batch / "extreme.tif"), np.array([[-3e38, 3e38], [3e38, -3e38]], np.float32).repeat(8, 0).repeat(8, 1))
    assert scan(batch, tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    skipped = {Path(r["path"]).name: r["reason"] for r in rows(tmp_path / "out" / "skipped.csv")}
    assert "score is not a number" in skipped["extreme.tif"]
    assert len(rows(tmp_path / "out" / "results.csv")) == 8
    with open_session(tmp_path / "s.db", mode="ro") as s:
        assert s.run().n_images == 8
        assert [Path(k.path).name for k in s.run().skipped] == ["extreme.tif"]


# ----------------------------------------------------------------------------- silently wrong or missing
def test_finding3_a_session_records_its_folder_resolved(tiny_parts, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(4)
    for d in ("d1", "d2"):
        write_png(tmp_path / d / "parts" / "a.png", make_part(rng, defect=d == "d1"))
    monkeypatch.chdir(tmp_path / "d1")
    assert scan("parts", tiny_parts / "good", "out", "../s.db") == 0
    with open_session(tmp_path / "s.db", mode="ro") as s:
        assert s.folder == (tmp_path / "d1" / "parts").resolve()
        assert s.meta()["folder"] == str((tmp_path / "d1" / "parts").resolve())
    monkeypatch.chdir(tmp_path / "d2")
    capsys.readouterr()
    assert scan("parts", tiny_parts / "good", "out", "../s.db") == 2  # another folder: refused, not mixed in
    assert "belongs to the folder" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a report from anywhere finds the images
    assert main(["report", "s.db", "--out", "r.html", "-q", "--max-images", "5"]) == 0
    with open_session(tmp_path / "s.db", mode="ro") as s:
        assert [r.path for r in s.load_run().rows] == [(tmp_path / "d1" / "parts" / "a.png").resolve()]
    assert "not readable here" not in (tmp_path / "r.html").read_text(encoding="utf-8")
