"""Issue 18: ``scan --engine ray`` on a local Ray instance (2 CPUs) writes what a local scan
writes: same rows in the same order, scores within 1e-5, the same skipped files and reasons,
the same heat maps. Skipped when Ray (the 'distributed' extra) is not installed."""

import csv

import numpy as np
import pytest

from app.cli import main
from tests.conftest import make_part, write_png


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is the optional 'distributed' extra")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(root / "good" / f"g{i:02d}.png", make_part(rng))
    for i in range(9):
        write_png(root / "batch" / ("sub" if i % 2 else "") / f"p{i}.png", make_part(rng, defect=i % 3 == 0))
    (root / "batch" / "p4_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "batch" / "empty.png").write_bytes(b"")
    assert main(["train", str(root / "good"), "--detector", "pixel-gaussian", "--model", str(root / "model"),
                 "--set", "image_size=16", "--set", "blur_sigma=1", "-q"]) == 0
    return root


def _scan(root, out, *extra):
    return main(["scan", str(root / "batch"), "--detector", "pixel-gaussian", "--model", str(root / "model"),
                 "--out", str(out), "--set", "batch_size=2", "-q", *extra])


def test_ray_scan_is_the_local_scan(ray_instance, folder, tmp_path):
    assert _scan(folder, tmp_path / "local") == 0
    assert _scan(folder, tmp_path / "ray", "--engine", "ray") == 0
    local, remote = _rows(tmp_path / "local" / "results.csv"), _rows(tmp_path / "ray" / "results.csv")
    assert [r["path"] for r in remote] == [r["path"] for r in local] and len(local) == 9
    assert [(r["flagged"], r["heatmap"]) for r in remote] == [(r["flagged"], r["heatmap"]) for r in local]
    np.testing.assert_allclose([float(r["score"]) for r in remote], [float(r["score"]) for r in local], atol=1e-5)
    skipped = (tmp_path / "ray" / "skipped.csv").read_text()
    assert skipped == (tmp_path / "local" / "skipped.csv").read_text()
    assert "p4_broken.png" in skipped and "empty.png" in skipped
    maps = sorted(p.name for p in (tmp_path / "ray" / "heatmaps").iterdir())
    assert maps == sorted(p.name for p in (tmp_path / "local" / "heatmaps").iterdir()) and len(maps) == 9
    assert ray_instance.is_initialized()  # a Ray instance the scan did not start is left running


@pytest.mark.skipif(__import__("os").name != "posix", reason="POSIX signals")
def test_a_scan_interrupted_by_sigint_is_finished_by_the_ray_engine(ray_instance, folder, tmp_path, capsys):
    """Resume across engines: the rows a local scan wrote before SIGINT are kept, Ray scores only
    the images not reached, and the folder ends as an uninterrupted scan's (rows in listing order,
    skipped files, heat maps on the batch-wide scale)."""
    import json
    import signal

    from core.data.listing import RUN_MARKER
    from tests.app.test_interrupts import Scan, make_batch, scoring_started
    from tests.app.test_resume import _content

    batch = make_batch(tmp_path / "batch", 24)
    (batch / "p999_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = folder / "model"
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out",
                 str(tmp_path / "whole"), "--set", "batch_size=1", "-q"]) == 0
    out = tmp_path / "out"
    s = Scan(batch, out, model, delay_score=0.15)
    s.wait_for(scoring_started)
    s.proc.send_signal(signal.SIGINT)
    rc, err = s.finish()
    assert rc == 130, err
    done = len(_rows(out / "results.csv"))
    assert 1 <= done < 24
    capsys.readouterr()
    assert main(["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                 "--set", "batch_size=1", "--engine", "ray"]) == 0
    assert f"resuming the interrupted run in {out}: {done} images scored" in capsys.readouterr().err
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["complete"] is True and marker["resumed"] == done
    whole, resumed = _content(tmp_path / "whole"), _content(out)
    assert set(resumed) == set(whole)
    got, want = _rows(out / "results.csv"), _rows(tmp_path / "whole" / "results.csv")
    assert [(r["path"], r["flagged"], r["heatmap"]) for r in got] == [(r["path"], r["flagged"], r["heatmap"])
                                                                     for r in want]
    np.testing.assert_allclose([float(r["score"]) for r in got], [float(r["score"]) for r in want], atol=1e-5)
    assert resumed["skipped.csv"] == whole["skipped.csv"] and resumed["flagged.txt"] == whole["flagged.txt"]
