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
from tests.app import test_interrupts as interrupts
from tests.app.test_resume import _train
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


# --- finding 4: a resumed scan checks what it takes over
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("m27"), "model", 0)


def make_batch(folder, n=12):
    interrupts.make_batch(folder, n)
    (folder / "p000a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def model_scan(batch, out, model, *extra):
    return main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1", "-q", *extra])


def interrupted(batch, out, model, monkeypatch, after=6):
    """A scan stopped by SIGINT (in this process) once ``after`` images are scored."""
    import signal

    from core.detectors.pixel_gaussian import PixelGaussianDetector

    calls = []
    real = PixelGaussianDetector._score_batch

    def score(self, images):
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, images)

    with monkeypatch.context() as m:
        m.setattr(PixelGaussianDetector, "_score_batch", score)
        assert model_scan(batch, out, model) == 130
    return len(rows(out / "results.csv"))


def content(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _edit_rows(out):
    text = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    header = text[0].split(",")
    cells = [line.split(",") for line in text[1:]]
    s, f = header.index("score"), header.index("flagged")
    cells[0][s] = "0.001"
    cells[1][s] = "nan"
    cells[2][s] = "banana"
    cells[3][f] = "maybe"
    (out / "results.csv").write_text("\n".join([text[0], *(",".join(c) for c in cells)]) + "\n", encoding="utf-8")


def _swap_records(out):
    idx = out / ".maps" / "maps.idx"
    raw = bytearray(idx.read_bytes())
    rec = len(raw) // len(rows(out / "results.csv"))
    a, b = raw[0:8], raw[rec:rec + 8]  # swap the first two records' image indices
    raw[0:8], raw[rec:rec + 8] = b, a
    idx.write_bytes(bytes(raw))


def _nan_in_map(out):
    data = out / ".maps" / "maps.f16"
    raw = bytearray(data.read_bytes())
    raw[10:12] = np.array([np.inf], np.float16).tobytes()
    raw[40:42] = np.array([np.nan], np.float16).tobytes()
    data.write_bytes(bytes(raw))


TAMPER = {
    "edited_rows": _edit_rows,
    "deleted_index": lambda out: (out / ".maps" / "maps.idx").unlink(),
    "emptied_maps": lambda out: [(out / ".maps" / n).write_bytes(b"") for n in ("maps.idx", "maps.f16")],
    "random_map_bytes": lambda out: (out / ".maps" / "maps.f16").write_bytes(
        np.random.default_rng(0).bytes((out / ".maps" / "maps.f16").stat().st_size)),
    "inf_nan_in_maps": _nan_in_map,
    "swapped_index_records": _swap_records,
    "edited_skip_reason": lambda out: (out / "skipped.csv").write_text(
        (out / "skipped.csv").read_text().replace("corrupt image data", "fine really"), encoding="utf-8"),
    "deleted_journal": lambda out: (out / ".journal").unlink(),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_finding4_resume_checks_what_it_takes_over(model, tmp_path, monkeypatch, capsys, how):
    batch = make_batch(tmp_path / "batch")
    assert model_scan(batch, tmp_path / "whole", model) == 0
    out = tmp_path / "out"
    done = interrupted(batch, out, model, monkeypatch)
    assert 4 <= done < 12
    TAMPER[how](out)
    capsys.readouterr()
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1"]) == 0
    err = capsys.readouterr().err
    assert "resuming the interrupted run" in err and "failed their check and are scored again" in err
    assert content(out) == content(tmp_path / "whole")  # exactly what an uninterrupted scan writes
    scale = (out / "heatmap_scale.json").read_text()
    assert "Infinity" not in scale and "NaN" not in scale


def test_finding4_an_untouched_partial_run_is_taken_over_whole(model, tmp_path, monkeypatch, capsys):
    batch = make_batch(tmp_path / "batch")
    assert model_scan(batch, tmp_path / "whole", model) == 0
    out = tmp_path / "out"
    done = interrupted(batch, out, model, monkeypatch)
    write_png(batch / "a_first.png", make_part(np.random.default_rng(7)))  # shifts every listing index
    assert model_scan(batch, tmp_path / "whole2", model) == 0
    capsys.readouterr()
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1"]) == 0
    err = capsys.readouterr().err
    assert f"{done} images scored" in err and "failed their check" not in err
    assert content(out) == content(tmp_path / "whole2")  # maps found again under the new indices


def test_finding5_an_export_inside_the_scanned_folder_is_never_scanned(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    assert scan(batch, tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    assert main(["export", str(tmp_path / "s.db"), "--out", str(batch / "exported"), "-q"]) == 0
    assert len(list((batch / "exported" / "heatmaps").iterdir())) == 8
    assert scan(batch, tiny_parts / "good", tmp_path / "out2", tmp_path / "s.db") == 0
    assert sorted(Path(r["path"]).name for r in rows(tmp_path / "out2" / "results.csv")) == sorted(
        p.name for p in batch.glob("*.png"))
    # nor may an export replace the scanned folder itself
    assert main(["export", str(tmp_path / "s.db"), "--out", str(batch), "-q"]) == 2
    assert len(list(batch.glob("*.png"))) == 8


def test_finding8_a_re_export_replaces_the_earlier_one_whole(tiny_parts, tmp_path, capsys):
    assert scan(tiny_parts / "batch", tiny_parts / "good", tmp_path / "out", tmp_path / "a.db") == 0
    one = tmp_path / "one"
    write_png(one / "solo.png", make_part(np.random.default_rng(3), defect=True))
    assert scan(one, tiny_parts / "good", tmp_path / "out1", tmp_path / "b.db") == 0
    exp = tmp_path / "exp"
    assert main(["export", str(tmp_path / "a.db"), "--out", str(exp), "-q"]) == 0
    assert len(list((exp / "heatmaps").iterdir())) == 8
    assert main(["export", str(tmp_path / "b.db"), "--out", str(exp), "-q"]) == 0
    assert len(rows(exp / "results.csv")) == 1
    assert [p.name for p in (exp / "heatmaps").iterdir()] == ["solo.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]  # no temporary folder left
    foreign = tmp_path / "foreign"
    (foreign / "notes.txt").parent.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "a.db"), "--out", str(foreign), "-q"]) == 2
    assert "not empty" in capsys.readouterr().err and (foreign / "notes.txt").exists()


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_finding10_an_out_that_is_a_symbolic_link_is_written_through(tiny_parts, tmp_path):
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    assert scan(tiny_parts / "batch", tiny_parts / "good", link, tmp_path / "s.db") == 0
    assert link.is_symlink() and len(rows(target / "results.csv")) == 8
    assert scan(tiny_parts / "batch", tiny_parts / "good", link, tmp_path / "s.db") == 0  # and again
    assert link.is_symlink() and len(rows(target / "results.csv")) == 8
    elink, etarget = tmp_path / "elink", tmp_path / "etarget"
    elink.symlink_to(etarget)  # its target does not exist yet
    assert main(["export", str(tmp_path / "s.db"), "--out", str(elink), "-q"]) == 0
    assert elink.is_symlink() and len(rows(etarget / "results.csv")) == 8
    rlink, rtarget = tmp_path / "r.html", tmp_path / "real.html"
    rtarget.write_text("old")
    rlink.symlink_to(rtarget)
    assert main(["report", str(tmp_path / "s.db"), "--out", str(rlink), "-q"]) == 0
    assert rlink.is_symlink() and rtarget.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_finding6_every_left_out_mask_is_in_skipped_csv_and_other_pngs_are_scored(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    photo = cv2.imread(str(batch / "ok0.png"))
    cv2.imwrite(str(batch / "ok0.jpg"), photo)  # ok0.png beside ok0.jpg: a part all the same
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[4:9, 4:9] = 255
    cv2.imwrite(str(batch / "bad0.jpg"), photo)
    cv2.imwrite(str(batch / "bad0.png"), mask)  # now a binary mask of bad0.jpg
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"),
                 "--out", str(tmp_path / "out"), *SMALL, "-q"]) == 0
    scored = sorted(Path(r["path"]).name for r in rows(tmp_path / "out" / "results.csv"))
    assert scored == sorted(["ok0.png", "ok0.jpg", "bad0.jpg", "ok1.png", "ok2.png", "ok3.png", "bad1.png",
                             "bad2.png", "bad3.png"])
    skipped = {Path(r["path"]).name: r["reason"] for r in rows(tmp_path / "out" / "skipped.csv")}
    assert skipped == {"bad0.png": "the mask of bad0.jpg beside it, not a part"}


# ----------------------------------------------------------------------------- security
FORMULA_NAMES = ["=1+2.png", "@SUM(1+1).png", "+x.png", "-y.png", "'q.png"]


def _cells(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _no_formula(table):
    for row in table:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r") or _is_number(cell), (cell, row)


def _is_number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_finding11_formulas_in_names_and_notes_are_neutralised_losslessly(tiny_parts, tmp_path, monkeypatch):
    from core.io.export import csv_text_raw

    batch = tiny_parts / "batch"
    for i, name in enumerate(FORMULA_NAMES):
        (batch / name).write_bytes((batch / f"bad{i % 4}.png").read_bytes())
    (batch / "=broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.chdir(batch)  # scanning "." writes the bare names, which then start the cells
    code = main(["scan", ".", "--detector", "ocsvm", "--train", str(tiny_parts / "good"), "--out",
                 str(tmp_path / "out"), "--session", str(tmp_path / "s.db"), "--set", "image_size=16",
                 "--threshold", "-1e9", "-q"])  # every image flagged: every name in flagged.txt
    assert code == 0
    out = tmp_path / "out"
    results = _cells(out / "results.csv")
    _no_formula(results)
    names = {Path(csv_text_raw(r[0])).name for r in results[1:]}
    assert set(FORMULA_NAMES) <= names  # the exact names come back by dropping one leading '
    assert all(_is_number(r[1]) for r in results[1:])  # scores stay numbers (negative ones: tests/core/test_fuzz.py)
    raw = (out / "results.csv").read_text(encoding="utf-8")
    assert '"\'' in raw  # a neutralised cell is quoted
    _no_formula(_cells(out / "skipped.csv"))
    assert {Path(csv_text_raw(r[0])).name for r in _cells(out / "skipped.csv")[1:]} == {"=broken.png"}
    flagged = _cells(out / "flagged.txt")
    _no_formula(flagged)
    assert set(FORMULA_NAMES) <= {Path(csv_text_raw(r[0])).name for r in flagged}
    with open_session(tmp_path / "s.db") as s:
        first = s.load_run().rows[0].path
        s.set_verdict(first, "ng")
        s.set_note(first, '=HYPERLINK("http://evil.example","x")')
    assert main(["export", str(tmp_path / "s.db"), "--out", str(tmp_path / "exp"), "-q"]) == 0
    exported = _cells(tmp_path / "exp" / "results.csv")
    _no_formula(exported)
    note = exported[0].index("note")
    assert [csv_text_raw(r[note]) for r in exported[1:] if r[note]] == ['=HYPERLINK("http://evil.example","x")']
    _no_formula(_cells(tmp_path / "exp" / "flagged.txt"))


# ----------------------------------------------------------------------------- the report
def _reviewed_session(tiny_parts, tmp_path):
    assert scan(tiny_parts / "batch", tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    with open_session(tmp_path / "s.db") as s:
        flagged = sorted((r for r in s.load_run().rows if r.flagged), key=lambda r: -r.score)
    assert len(flagged) >= 2
    return [r.path for r in flagged]


def _report(tmp_path, *extra):
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html"), "-q", *extra]) == 0
    return (tmp_path / "r.html").read_text(encoding="utf-8")


def _row_of(html, name):
    return next(tr for tr in html.split("<tr") if f"{name}</td>" in tr)


def test_finding9_an_image_changed_or_missing_since_the_scan_is_not_shown_as_scanned(tiny_parts, tmp_path):
    changed, missing = _reviewed_session(tiny_parts, tmp_path)[:2]
    good = (tiny_parts / "batch" / "ok0.png").read_bytes()
    changed.write_bytes(good)  # overwritten afterwards by a good part
    missing.unlink()
    html = _report(tmp_path)
    row = _row_of(html, changed.name)
    assert "changed since it was scanned" in row and row.count("data:image/jpeg") == 1  # the heat map alone
    row = _row_of(html, missing.name)
    assert "missing" in row and row.count("data:image/jpeg") == 1


def _tamper(db, sql, *params):
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_finding13_a_zlib_bomb_map_is_refused_unread(tiny_parts, tmp_path):
    import zlib

    first = _reviewed_session(tiny_parts, tmp_path)[0]
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in about 64 KB
    _tamper(tmp_path / "s.db", "UPDATE maps SET data = ?, height = 4096, width = 4096 WHERE rowid = "
            "(SELECT m.rowid FROM maps m JOIN results r ON r.image_sha256 = m.image_sha256 JOIN images i "
            "ON i.id = r.image_id WHERE i.path = ?)", bomb, first.name)
    html = _report(tmp_path)
    assert "heat map damaged in the session file" in _row_of(html, first.name)
    from core.session.maps import decode_map

    with pytest.raises(ValueError):
        decode_map("f16-split-zlib", 4096, 4096, bomb)  # stops at 32 MiB of output, and says so
    with pytest.raises(ValueError):
        decode_map("f16-split-zlib", 100_000, 100_000, bomb)  # never starts


def test_finding13_an_image_path_outside_the_folder_is_never_embedded(tiny_parts, tmp_path):
    first = _reviewed_session(tiny_parts, tmp_path)[0]
    secret = tmp_path / "secret.png"
    secret.write_bytes(first.read_bytes())
    _tamper(tmp_path / "s.db", "UPDATE images SET path = ? WHERE path = ?", str(secret), first.name)
    _tamper(tmp_path / "s.db", "UPDATE images SET path = ? WHERE path = ?", "../../secret.png", "bad1.png")
    html = _report(tmp_path)
    for tr in html.split("<tr")[1:]:
        if "secret.png</td>" in tr:
            assert "outside the session" in tr and tr.count("data:image/jpeg") == 1  # the heat map only


def test_finding14_redacted_report_and_visible_bidi_controls(tiny_parts, tmp_path):
    import getpass

    first = _reviewed_session(tiny_parts, tmp_path)[0]
    with open_session(tmp_path / "s.db") as s:
        s.set_verdict(first, "ng")
        s.set_note(first, "looks fine \u202egnp.exe")
    html = _report(tmp_path)
    assert "\u202e" not in html and "⟨U+202E⟩gnp.exe" in html
    assert str(tmp_path) in html  # the inspector's own report: full paths
    html = _report(tmp_path, "--redact")
    assert str(tmp_path) not in html and str(tiny_parts) not in html
    assert "<th>run by</th><td class='mono'>inspector 1, " in html  # no OS user name
    assert "<br><small>inspector 1, " in html and f"<small>{getpass.getuser()}," not in html  # the note's author
    assert f">{first.name}</td>" in html and "⟨U+202E⟩" in html  # paths relative to the folder


# ----------------------------------------------------------------------------- messages
def _one_line_exit_2(capsys, argv, *words):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("anomaly-inspector: "), err
    assert "Error:" not in err, err  # no Python exception name
    for w in words:
        assert w in err, err
    return err


def test_finding15_damaged_sessions_and_unwritable_places_are_one_line_exit_2(tiny_parts, tmp_path, capsys):
    import sqlite3

    assert scan(tiny_parts / "batch", tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    (tmp_path / "empty.db").write_bytes(b"")
    _one_line_exit_2(capsys, ["report", str(tmp_path / "empty.db"), "--out", str(tmp_path / "r.html")],
                     "empty.db", "empty (0 bytes)")
    _one_line_exit_2(capsys, ["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--train",
                              str(tiny_parts / "good"), "--out", str(tmp_path / "o2"), "--session",
                              str(tmp_path / "s.db" / "x.db"), *SMALL], "s.db is a file")
    (tmp_path / "afile").write_text("in the way")
    _one_line_exit_2(capsys, ["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "afile" / "r.html")],
                     "cannot write the report", "afile")
    _one_line_exit_2(capsys, ["export", str(tmp_path / "s.db"), "--out", str(tmp_path / "afile" / "e")], "afile")
    damaged = tmp_path / "damaged.db"
    raw = bytearray((tmp_path / "s.db").read_bytes())
    raw[100:4096] = b"\xa5" * (4096 - 100)  # the first page's b-tree
    damaged.write_bytes(bytes(raw))
    _one_line_exit_2(capsys, ["report", str(damaged), "--out", str(tmp_path / "r.html")], "damaged.db")
    bad_json = tmp_path / "json.db"
    bad_json.write_bytes((tmp_path / "s.db").read_bytes())
    conn = sqlite3.connect(bad_json)
    conn.execute("UPDATE runs SET settings = '{bad'")
    conn.commit()
    conn.close()
    for cmd, out in (("report", "r.html"), ("export", "e")):
        _one_line_exit_2(capsys, [cmd, str(bad_json), "--out", str(tmp_path / out)], "json.db", "damaged",
                         "run 1 cannot be read")


def test_finding15_resume_with_a_garbage_marker_says_so(model, tmp_path, capsys):
    from core.data.listing import RUN_MARKER

    batch = make_batch(tmp_path / "batch", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_MARKER).write_text("complete garbage")
    err = _one_line_exit_2(capsys, ["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model),
                                    "--out", str(out), "--resume", "-q"], "run marker cannot be read")
    assert "is complete" not in err


def test_finding15_report_and_export_leave_no_wal_or_shm_beside_the_session(tiny_parts, tmp_path):
    assert scan(tiny_parts / "batch", tiny_parts / "good", tmp_path / "out", tmp_path / "s.db") == 0
    beside = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.db"))  # noqa: E731
    before = beside()
    assert "s.db-wal" not in before and "s.db-shm" not in before
    assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html"), "-q"]) == 0
    assert main(["export", str(tmp_path / "s.db"), "--out", str(tmp_path / "e"), "-q"]) == 0
    assert beside() == before
    with open_session(tmp_path / "s.db") as s:  # while a writer has it open, a reader still reads it
        assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r2.html"), "-q"]) == 0
        s.set_note(s.load_run().rows[0].path, "written meanwhile")
        assert main(["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r3.html"), "-q"]) == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="a read-only folder (root may write anywhere)")
def test_finding15_a_session_in_a_read_only_folder_opens_for_report_and_export(tiny_parts, tmp_path):
    assert scan(tiny_parts / "batch", tiny_parts / "good", tmp_path / "out", tmp_path / "ro" / "s.db") == 0
    (tmp_path / "ro").chmod(0o555)
    try:
        assert main(["report", str(tmp_path / "ro" / "s.db"), "--out", str(tmp_path / "r.html"), "-q"]) == 0
        assert main(["export", str(tmp_path / "ro" / "s.db"), "--out", str(tmp_path / "e"), "-q"]) == 0
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_finding15_quiet_silences_warnings_and_codec_chatter(model, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    batch = make_batch(tmp_path / "batch", 3)  # holds a damaged PNG: OpenCV and libpng complain
    cv2.imwrite(str(batch / "extreme.tif"), np.array([[-3e38, 3e38], [3e38, -3e38]], np.float32).repeat(8, 0)
                .repeat(8, 1))  # RuntimeWarnings in the float conversion
    argv = ["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    loud = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 0 and ("WARN" in loud.stderr or "libpng" in loud.stderr), loud.stderr
    quiet = subprocess.run([sys.executable, "-c", code, *argv, "--out", str(tmp_path / "q"), "-q"], env=env,
                           cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    bad = subprocess.run([sys.executable, "-c", code, *argv, "--out", str(tmp_path / "q"), "-q", "--resume"], env=env,
                         cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot resume" in bad.stderr  # errors get through
