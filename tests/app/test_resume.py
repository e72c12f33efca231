"""Issue 18: a scan interrupted by SIGINT and run again into the same ``--out`` continues where
it stopped and ends with the folder an uninterrupted scan writes; another model's rows are
never mixed in."""

import json
import os
import signal

import numpy as np
import pytest

from app.cli import main
from core.data.listing import RUN_MARKER
from tests.app.test_interrupts import Scan, make_batch, rows, scoring_started
from tests.conftest import make_part, write_png

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _train(root, name, seed):
    rng = np.random.default_rng(seed)
    for i in range(12):
        write_png(root / f"good{seed}" / f"g{i:02d}.png", make_part(rng))
    assert main(["train", str(root / f"good{seed}"), "--detector", "pixel-gaussian", "--model", str(root / name),
                 "--set", "image_size=16", "--set", "blur_sigma=1", "-q"]) == 0
    return root / name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return _train(root, "model_a", 0), _train(root, "model_b", 5)


def _scan(batch, out, model, *extra):
    return main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1", "-q", *extra])


def _content(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != RUN_MARKER}


def _interrupted(batch, out, model):
    s = Scan(batch, out, model, delay_score=0.15)
    s.wait_for(scoring_started)
    s.proc.send_signal(signal.SIGINT)
    rc, err = s.finish()
    assert rc == 130, err
    assert json.loads((out / RUN_MARKER).read_text())["complete"] is False
    return len(rows(out / "results.csv"))


def test_resumed_scan_after_sigint_equals_an_uninterrupted_one(models, tmp_path, capsys):
    model = models[0]
    batch = make_batch(tmp_path / "batch", 30)
    (batch / "p999_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert _scan(batch, tmp_path / "whole", model) == 0
    out = tmp_path / "out"
    done = _interrupted(batch, out, model)
    assert 1 <= done < 30
    assert (out / ".maps").is_dir()  # kept for the resume
    capsys.readouterr()
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1"]) == 0
    err = capsys.readouterr().err
    assert f"resuming the interrupted run in {out}: {done} images scored" in err
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["complete"] is True and marker["resumed"] == done
    assert _content(out) == _content(tmp_path / "whole")  # results.csv, flagged, skipped, heat maps, scale


def test_a_partial_run_of_another_model_is_replaced_not_continued(models, tmp_path, capsys):
    a, b = models
    batch = make_batch(tmp_path / "batch", 30)
    out = tmp_path / "out"
    _interrupted(batch, out, a)
    assert _scan(batch, out, b, "--resume") == 2  # --resume insists on the same model
    assert "another model" in capsys.readouterr().err
    assert _scan(batch, out, b) == 0
    assert _scan(batch, tmp_path / "b_whole", b) == 0
    assert _content(out) == _content(tmp_path / "b_whole")
    assert json.loads((out / RUN_MARKER).read_text())["resumed"] == 0


def test_resume_without_a_partial_run_is_a_usage_error(models, tmp_path, capsys):
    batch = make_batch(tmp_path / "batch", 3)
    assert _scan(batch, tmp_path / "out", models[0], "--resume") == 2
    assert "holds no run" in capsys.readouterr().err
    assert _scan(batch, tmp_path / "out", models[0]) == 0
    assert _scan(batch, tmp_path / "out", models[0], "--resume") == 2
    assert "complete" in capsys.readouterr().err
