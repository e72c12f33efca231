"""The command-line contract: outputs, exit codes, messages."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from app.cli import main
from tests.conftest import ROOT, make_part, write_png

SMALL = ["--set", "image_size=16", "--set", "blur_sigma=1"]


def rows(path):
    return list(csv.DictReader(open(path, newline="")))


def test_detectors_lists_registry(capsys):
    assert main(["detectors", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert {"pixel-gaussian", "ocsvm"} <= set(listed)
    assert listed["pixel-gaussian"]["kind"] == "trained" and listed["pixel-gaussian"]["available"]
    assert main(["detectors"]) == 0
    assert "pixel-gaussian" in capsys.readouterr().out


def test_scan_with_training_writes_outputs(tiny_parts, tmp_path):
    out = tmp_path / "OUT"
    code = main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--train",
                 str(tiny_parts / "good"), "--out", str(out), *SMALL, "-q"])
    assert code == 0
    r = rows(out / "results.csv")
    assert len(r) == 8 and list(r[0]) == ["path", "score", "flagged", "heatmap"]
    assert len(list((out / "heatmaps").glob("*.png"))) == 8
    assert all((out / x["heatmap"]).is_file() for x in r)
    flagged = (out / "flagged.txt").read_text().splitlines()
    assert sorted(flagged) == sorted(x["path"] for x in r if x["flagged"] == "true")
    assert rows(out / "skipped.csv") == []


def test_train_then_scan_with_model_and_bad_files(tiny_parts, tmp_path, capsys):
    """Acceptance 3: corrupt PNG, zero-byte JPG, text named x.png are skipped with reasons;
    a 16-bit TIFF, an RGBA PNG and two good images are scored; exit 0."""
    model = tmp_path / "model"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model), *SMALL, "-q"]) == 0
    assert (model / "config.json").exists() and (model / "weights.safetensors").exists()

    mixed = tmp_path / "mixed"
    rng = np.random.default_rng(3)
    good = write_png(mixed / "good1.png", make_part(rng))
    write_png(mixed / "good2.png", make_part(rng))
    data = good.read_bytes()
    (mixed / "corrupt.png").write_bytes(data[:60])
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "x.png").write_text("this is a text file")
    write_png(mixed / "deep.tif", (make_part(rng)[..., 0] * 65535).astype(np.uint16))
    rgba = (make_part(rng) * 255).astype(np.uint8)
    write_png(mixed / "alpha.png", np.concatenate([rgba, np.full((32, 32, 1), 200, np.uint8)], axis=2))

    out = tmp_path / "OUT"
    code = main(["scan", str(mixed), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out), "-q"])
    assert code == 0
    scored = {p.split("/")[-1] for p in (x["path"] for x in rows(out / "results.csv"))}
    assert scored == {"good1.png", "good2.png", "deep.tif", "alpha.png"}
    skipped = {x["path"].split("/")[-1]: x["reason"] for x in rows(out / "skipped.csv")}
    assert set(skipped) == {"corrupt.png", "empty.jpg", "x.png"}
    assert "corrupt" in skipped["corrupt.png"] and "empty" in skipped["empty.jpg"]
    assert "not a decodable image" in skipped["x.png"]


def test_threshold_and_fpr_options(tiny_parts, tmp_path):
    model = tmp_path / "model"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model), *SMALL, "-q"]) == 0
    out = tmp_path / "o1"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--out", str(out), "--threshold", "1e12", "-q"]) == 0
    assert all(x["flagged"] == "false" for x in rows(out / "results.csv"))
    assert (out / "flagged.txt").read_text() == ""
    out2 = tmp_path / "o2"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--out", str(out2), "--fpr", "0.5", "-q"]) == 0
    assert any(x["flagged"] == "true" for x in rows(out2 / "results.csv"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["scan", "/no/such/folder", "--detector", "pixel-gaussian", "--train", "."], "folder not found"),
        (["scan", "{batch}", "--detector", "nope", "--train", "{good}"], "unknown detector 'nope'"),
        (["scan", "{batch}", "--detector", "pixel-gaussian", "--train", "{good}", "--set", "image_size=huge"], "image_size"),
        (["scan", "{batch}", "--detector", "pixel-gaussian", "--train", "{good}", "--set", "colour=red"], "unknown setting"),
        (["scan", "{batch}", "--detector", "pixel-gaussian"], "--train GOOD_DIR or --model"),
        (["scan", "{batch}", "--detector", "pixel-gaussian"], "a zero-shot detector needs neither: --detector mutual"),
        (["scan", "{batch}", "--detector", "pixel-gaussian", "--model", "/no/model"], "model folder not found"),
        (["scan", "{empty}", "--detector", "pixel-gaussian", "--train", "{good}"], "no image files"),
        (["train", "{good}", "--detector", "ocsvm", "--model", "{batch}/ok0.png"], "must be a folder"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tiny_parts, tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    fill = {"batch": tiny_parts / "batch", "good": tiny_parts / "good", "empty": tmp_path / "empty"}
    argv = [a.format(**fill) for a in args]
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["scan"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["scan", ".", "--detector", "ocsvm", "--fpr", "2"])
    assert e.value.code == 2


def test_runtime_failure_exits_1(tmp_path, capsys):
    good = tmp_path / "good"
    rng = np.random.default_rng(0)
    for i in range(3):  # too few to hold out 3 for calibration
        write_png(good / f"{i}.png", make_part(rng))
    code = main(["scan", str(good), "--detector", "pixel-gaussian", "--train", str(good), "--out", str(tmp_path / "o"),
                 "--calibration", "holdout", "-q"])
    assert code == 1
    assert "too few" in capsys.readouterr().err


def test_model_of_other_detector_is_refused(tiny_parts, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", str(tiny_parts / "good"), "--detector", "ocsvm", "--model", str(model), "--set", "image_size=16", "-q"]) == 0
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model), "-q"]) == 2
    assert "holds a 'ocsvm' model" in capsys.readouterr().err
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "ocsvm", "--model", str(model), "--set", "image_size=32", "-q"]) == 2


def test_demo_headless_writes_results(tmp_path):
    code = main(["demo", "--headless", "--dir", str(tmp_path / "sample"), "-q"])
    assert code == 0
    r = rows(tmp_path / "sample" / "results" / "results.csv")
    assert len(r) == 36
    flagged = {x["path"].split("/")[-1] for x in r if x["flagged"] == "true"}
    defective = {x["path"].split("/")[-1] for x in r if not x["path"].endswith("_ok.png")}
    assert len(flagged & defective) >= 10  # the generated defects are found


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "app", "detectors"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "pixel-gaussian" in proc.stdout


def test_acceptance_scan_bottle(datasets_dir, tmp_path):
    """Acceptance 2: 83 result rows and 83 heat maps on the bottle test set; ocsvm 83 rows."""
    bottle = datasets_dir / "mvtec_ad" / "bottle"
    out = tmp_path / "pg"
    assert main(["scan", str(bottle / "test"), "--detector", "pixel-gaussian", "--train", str(bottle / "train" / "good"),
                 "--out", str(out), "-q"]) == 0
    assert len(rows(out / "results.csv")) == 83
    assert len(list((out / "heatmaps").glob("*.png"))) == 83
    out = tmp_path / "svm"
    assert main(["scan", str(bottle / "test"), "--detector", "ocsvm", "--train", str(bottle / "train" / "good"),
                 "--out", str(out), "-q"]) == 0
    assert len(rows(out / "results.csv")) == 83


def test_scan_refuses_a_threshold_set_for_other_score_settings(tiny_parts, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model), *SMALL, "-q"]) == 0
    batch = str(tiny_parts / "batch")
    # batch size does not change a score: the calibrated threshold still applies
    assert main(["scan", batch, "--detector", "pixel-gaussian", "--model", str(model), "--set", "batch_size=2",
                 "--out", str(tmp_path / "a"), "-q"]) == 0
    capsys.readouterr()
    # a different blur changes every score: the old threshold would flag at random
    for extra in ([], ["--fpr", "0.05"]):
        assert main(["scan", batch, "--detector", "pixel-gaussian", "--model", str(model), "--set", "blur_sigma=3",
                     "--out", str(tmp_path / "b"), "-q", *extra]) == 2
        err = capsys.readouterr().err
        assert "blur_sigma: 1.0 -> 3.0" in err and "--threshold" in err
    assert not (tmp_path / "b").exists()
    assert main(["scan", batch, "--detector", "pixel-gaussian", "--model", str(model), "--set", "blur_sigma=3",
                 "--threshold", "5", "--out", str(tmp_path / "c"), "-q"]) == 0
    assert len(rows(tmp_path / "c" / "results.csv")) == 8


def test_a_folder_that_is_not_a_model_is_a_usage_error(tiny_parts, tmp_path, capsys):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    code = main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(not_a_model),
                 "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(not_a_model) in err[0], err


def test_training_calibrates_at_the_default_fpr(tiny_parts, tmp_path, monkeypatch):
    import app.cli.models as models
    from core.io.checkpoint import read_header

    monkeypatch.setattr(models, "DEFAULT_FPR", 0.25)  # not the value that was once typed in
    model = tmp_path / "m"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--set", "image_size=32", "-q"]) == 0
    assert read_header(model)["threshold"]["fpr"] == 0.25


def test_a_broken_sub_command_module_fails_loudly():
    """A sub-command whose module cannot be imported must not silently vanish from the CLI."""
    code = ("import sys; sys.modules['app.cli.bench'] = None\n"
            "from app.cli import main\nraise SystemExit(main(['--help']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode != 0 and "Error" in out.stderr and "app.cli.bench" in out.stderr


def test_every_sub_command_is_listed():
    from app.cli import build_parser

    helptext = build_parser().format_help()
    for name in ("gui", "detectors", "train", "scan", "demo", "bench", "weights"):
        assert name in helptext


def test_engine_ray_without_ray_exits_2_naming_the_extra(tiny_parts, tmp_path, monkeypatch, capsys):
    import core.engine.ray_scan as ray_scan

    monkeypatch.setattr(ray_scan, "ray_available", lambda: False)
    model = tmp_path / "model"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--set", "image_size=16", "-q"]) == 0
    capsys.readouterr()
    code = main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--out", str(tmp_path / "out"), "--engine", "ray", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "[distributed]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_engine_ray_needs_a_saved_model(tiny_parts, tmp_path, monkeypatch, capsys):
    import core.engine.ray_scan as ray_scan

    monkeypatch.setattr(ray_scan, "ray_available", lambda: True)  # the check, not Ray itself
    code = main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"),
                 "--out", str(tmp_path / "out"), "--engine", "ray", "-q"])
    assert code == 2 and "--model" in capsys.readouterr().err


def test_scan_with_the_zero_shot_mutual_detector_groups_the_batch(tiny_parts, tmp_path):
    out = tmp_path / "out"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "mutual", "--out", str(out), "-q",
                 "--set", "backbone=tiny-random", "--set", "image_size=32", "--set", "references=4"]) == 0
    got = {r["path"].rsplit("/", 1)[-1]: r for r in rows(out / "results.csv")}
    # half of this batch is defective, the same blob in the same place: not the rare defects mutual scoring
    # finds (tests/core/test_mutual.py has those); here the scan runs and every image gets a group
    assert len(got) == 8 and {r["group"] for r in got.values()} <= {"normal", "suspect"}
    assert all(float(r["score"]) >= 0 and r["references"] == "4" for r in got.values())
