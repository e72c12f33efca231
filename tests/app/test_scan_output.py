"""Issue 15, findings 1, 7, 9 and 10: what ``scan`` writes, and where, whatever the folder holds."""

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from core.data.listing import RUN_MARKER
from tests.conftest import make_part, write_png

SMALL = ["--set", "image_size=16", "--set", "blur_sigma=1"]


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def scan(batch, good, out, *extra):
    return main(["scan", str(batch), "--detector", "pixel-gaussian", "--train", str(good), "--out", str(out),
                 *SMALL, "-q", *extra])


def leftovers(parent):
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith("."))


@pytest.mark.skipif(os.name != "posix" or os.uname().sysname == "Darwin", reason="non-UTF-8 names need a POSIX file system")
@pytest.mark.parametrize("detector", ["pixel-gaussian", "ocsvm"])
def test_finding1_non_utf8_file_name_does_not_destroy_the_scan(tiny_parts, tmp_path, detector):
    batch = tiny_parts / "batch"
    data = (batch / "bad0.png").read_bytes()
    with open(os.path.join(os.fsencode(batch), b"x\xff.png"), "wb") as fh:
        fh.write(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("path,score,flagged\nold.png,1,false\n")  # an older run
    code = main(["scan", str(batch), "--detector", detector, "--train", str(tiny_parts / "good"), "--out", str(out),
                 "--set", "image_size=16", "-q"])
    assert code == 0
    r = rows(out / "results.csv")
    assert len(r) == 9 and "old.png" not in {x["path"] for x in r}
    assert any(x["path"].endswith("x\\xff.png") for x in r)
    assert not [n for n in leftovers(tmp_path) if n.endswith(".tmp") or ".tmp-" in n]


def test_finding7_rerun_leaves_no_stale_heat_maps(tiny_parts, tmp_path):
    out = tmp_path / "out"
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 0
    small = tmp_path / "small"
    rng = np.random.default_rng(5)
    for i in range(3):
        write_png(small / f"s{i}.png", make_part(rng))
    assert scan(small, tiny_parts / "good", out) == 0
    assert len(rows(out / "results.csv")) == 3
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["s0.png", "s1.png", "s2.png"]
    assert json.loads((out / RUN_MARKER).read_text())["complete"] is True
    assert leftovers(tmp_path) == []


def test_finding7_out_inside_the_scanned_folder_is_never_scanned(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    assert scan(batch, tiny_parts / "good", batch / "results") == 0
    assert scan(batch, tiny_parts / "good", batch / "results") == 0
    assert scan(batch, tiny_parts / "good", batch / "results2") == 0  # the first output is not parts either
    for out in ("results", "results2"):
        r = rows(batch / out / "results.csv")
        assert len(r) == 8 and not any("heatmaps" in x["path"] or "results" in Path(x["path"]).parent.name for x in r)


def test_finding7_same_stems_get_heat_maps_their_rows_point_to(tmp_path, tiny_parts):
    batch = tmp_path / "b"
    rng = np.random.default_rng(2)
    for sub in ("a", "b", "a/x"):
        write_png(batch / sub / "000.png", make_part(rng, defect=True))
    out = tmp_path / "out"
    assert scan(batch, tiny_parts / "good", out) == 0
    r = rows(out / "results.csv")
    maps = [x["heatmap"] for x in r]
    assert len(set(maps)) == 3 and all((out / m).is_file() for m in maps)
    assert len(list((out / "heatmaps").iterdir())) == 3


def test_finding7_foreign_non_empty_out_is_refused_without_overwrite(tiny_parts, tmp_path, capsys):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "thesis.txt").read_text() == "precious"
    assert scan(tiny_parts / "batch", tiny_parts / "good", out, "--overwrite") == 0
    assert not (out / "thesis.txt").exists() and len(rows(out / "results.csv")) == 8


def test_finding7_out_must_not_be_the_scanned_folder(tiny_parts, tmp_path, capsys):
    batch = tiny_parts / "batch"
    assert scan(batch, tiny_parts / "good", batch, "--overwrite") == 2
    assert scan(batch, tiny_parts / "good", tiny_parts, "--overwrite") == 2
    assert "scanned folder" in capsys.readouterr().err
    assert len(list(batch.glob("*.png"))) == 8


@pytest.mark.skipif(os.name != "posix", reason="symbolic links as on POSIX")
def test_finding9_every_file_is_in_results_or_skipped(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    (batch / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (batch / "loop.png").symlink_to(batch / "loop.png")
    (batch / "sub").mkdir()
    (batch / "sub" / "up").symlink_to(batch)
    out = tmp_path / "out"
    assert scan(batch, tiny_parts / "good", out) == 0
    skipped = {Path(x["path"]).name: x["reason"] for x in rows(out / "skipped.csv")}
    assert "broken" in skipped["gone.png"] and "loop" in skipped["loop.png"] and "loop" in skipped["up"]
    assert len(rows(out / "results.csv")) == 8


@pytest.mark.skipif(os.name != "posix", reason="newlines in file names are POSIX only")
def test_finding10_newline_in_a_name_is_one_quoted_line_of_flagged_txt(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    (batch / "bad0.png").rename(batch / 'two\nlines "x".png')
    out = tmp_path / "out"
    assert scan(batch, tiny_parts / "good", out, "--threshold", "-1") == 0  # flag all
    text = (out / "flagged.txt").read_text(encoding="utf-8")
    flagged = [r["path"] for r in rows(out / "results.csv") if r["flagged"] == "true"]
    assert len(flagged) == 8 and text.count("\n") == 9  # one newline is inside a quoted name
    assert sum(line.startswith('"') for line in text.split("\n")) == 1
    back = [line[0] for line in csv.reader(text.splitlines(keepends=True))]
    assert sorted(back) == sorted(flagged)


def test_finding10_negative_threshold_with_exponent_is_a_value(tiny_parts, tmp_path):
    out = tmp_path / "out"
    assert scan(tiny_parts / "batch", tiny_parts / "good", out, "--threshold", "-1e-3") == 0
    assert all(r["flagged"] == "true" for r in rows(out / "results.csv"))


def _no_training(monkeypatch):
    import core.engine.workflows as wf

    def boom(*a, **k):
        raise AssertionError("trained before checking the output")

    monkeypatch.setattr(wf, "train_detector", boom)


def test_finding10_non_empty_model_folder_is_refused_before_training(tiny_parts, tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    model = tmp_path / "m"
    model.mkdir()
    (model / "notes.txt").write_text("x")
    code = main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model), *SMALL, "-q"])
    assert code == 2 and "not empty" in capsys.readouterr().err


def test_finding10_unwritable_out_is_reported_before_the_scan(tiny_parts, tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert scan(tiny_parts / "batch", tiny_parts / "good", blocker / "out") == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and len(err.strip().splitlines()) == 1


def test_finding10_full_disk_names_the_path_and_leaves_no_tmp(tiny_parts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 0
    before = (out / "results.csv").read_bytes()
    import core.io.export as export

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr(export, "write_heatmap", full)  # one heat map: the streamed scan writes them one by one
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and str(out) in err
    assert (out / "results.csv").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_folder_with_a_results_csv_and_other_files_is_not_taken_for_an_old_run(tiny_parts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n")
    (out / "notes.docx").write_text("precious")
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 2
    assert (out / "notes.docx").exists()
    legacy = tmp_path / "legacy"  # what a scan wrote before the run marker existed
    (legacy / "heatmaps").mkdir(parents=True)
    for name in ("results.csv", "flagged.txt", "skipped.csv", "heatmap_scale.json"):
        (legacy / name).write_text("")
    assert scan(tiny_parts / "batch", tiny_parts / "good", legacy) == 0
    assert (legacy / RUN_MARKER).exists()


@pytest.mark.skipif(os.name != "posix", reason="glob characters in names as on POSIX")
def test_out_names_with_glob_characters(tiny_parts, tmp_path):
    out = tmp_path / "run[1]*"
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 0
    assert scan(tiny_parts / "batch", tiny_parts / "good", out) == 0
    assert len(rows(out / "results.csv")) == 8 and leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="symbolic links as on POSIX")
def test_out_as_a_symbolic_link_is_written_through(tiny_parts, tmp_path):
    # issue 27, finding 10: the link stays, and the folder it names holds the run (it was
    # replaced by a real folder before, leaving the target empty)
    target = tmp_path / "elsewhere"
    small = tmp_path / "small"
    write_png(small / "s.png", make_part(np.random.default_rng(5)))
    assert scan(small, tiny_parts / "good", target) == 0
    link = tmp_path / "out"
    link.symlink_to(target)
    assert scan(tiny_parts / "batch", tiny_parts / "good", link) == 0
    assert link.is_symlink() and len(rows(target / "results.csv")) == 8
    assert leftovers(tmp_path) == []
