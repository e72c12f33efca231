"""Issue 15, findings 4 and 8, and the standing interrupt / concurrency tests: a ``scan``
subprocess stopped by SIGINT, SIGTERM or SIGKILL mid-scan or mid-export, and two scans into
one ``--out``. Afterwards the output folder is one complete run or clearly marked incomplete,
never a mix.

The scan runs through a small wrapper that slows scoring (and heat-map writing) down, so that
"mid-scan" and "mid-export" are reached deterministically without large data.
"""

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from core.data.listing import RUN_MARKER
from tests.conftest import ROOT, make_part, write_png

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

WRAPPER = """
import sys, time
import core.detectors.pixel_gaussian.detector as pg
import core.io.export as ex
delay_score, delay_map = float(sys.argv[1]), float(sys.argv[2])
_score, _colorize = pg.PixelGaussianDetector._score_batch, ex.colorize
def slow_score(self, images):
    time.sleep(delay_score * len(images))
    return _score(self, images)
def slow_colorize(*a, **k):
    time.sleep(delay_map)
    return _colorize(*a, **k)
pg.PixelGaussianDetector._score_batch = slow_score
ex.colorize = slow_colorize
from app.cli import main
sys.exit(main(sys.argv[3:]))
"""


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupts")
    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(root / "good" / f"g{i:02d}.png", make_part(rng))
    assert main(["train", str(root / "good"), "--detector", "pixel-gaussian", "--model", str(root / "model"),
                 "--set", "image_size=16", "--set", "blur_sigma=1", "-q"]) == 0
    return root / "model"


def make_batch(folder: Path, n: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_png(folder / f"p{i:03d}.png", make_part(rng, defect=i % 4 == 0))
    return folder


class Scan:
    """A ``scan`` subprocess whose stderr lines are collected as they come."""

    def __init__(self, batch, out, model, delay_score=0.0, delay_map=0.0):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        argv = ["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out),
                "--set", "batch_size=1"]
        self.proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(delay_score), str(delay_map), *argv],
                                     cwd=str(ROOT), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, errors="replace")
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, predicate, timeout=120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return
            try:
                self.seen.append(self.lines.get(timeout=0.05))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
        raise AssertionError(f"never reached the expected point; stderr: {''.join(self.seen)[-2000:]}")

    def finish(self, timeout=120.0):
        rc = self.proc.wait(timeout)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc, "".join(self.seen)


def scoring_started(s):
    return any(line.startswith("scan: ") and not line.startswith("scan: 0%") for line in s.seen)


def leftovers(out: Path):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def assert_complete(out: Path, n: int):
    assert json.loads((out / RUN_MARKER).read_text())["complete"] is True
    assert not (out / "INCOMPLETE.txt").exists()
    r = rows(out / "results.csv")
    assert len(r) == n and rows(out / "skipped.csv") == []
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(Path(x["heatmap"]).name for x in r)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_scan_writes_what_was_scored_marked_incomplete(model, tmp_path, sig):
    batch = make_batch(tmp_path / "batch", 40)
    out = tmp_path / "out"
    s = Scan(batch, out, model, delay_score=0.15)
    s.wait_for(scoring_started)
    s.proc.send_signal(sig)
    rc, err = s.finish()
    assert rc == 130, err
    assert "incomplete" in err
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["complete"] is False
    assert "did not finish" in (out / "INCOMPLETE.txt").read_text()
    scored, skipped = rows(out / "results.csv"), rows(out / "skipped.csv")
    assert 1 <= len(scored) < 40
    assert all(x["reason"].startswith("not scored") for x in skipped)
    assert sorted(Path(x["path"]).name for x in scored + skipped) == sorted(p.name for p in batch.iterdir())
    assert len(list((out / "heatmaps").iterdir())) == len(scored)
    assert leftovers(out) == []


def test_sigkill_mid_scan_leaves_the_previous_run_and_the_next_run_cleans_up(model, tmp_path):
    batch = make_batch(tmp_path / "batch", 40)
    out = tmp_path / "out"
    small = make_batch(tmp_path / "small", 3, seed=7)
    assert main(["scan", str(small), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out), "-q"]) == 0
    before = (out / "results.csv").read_bytes()
    s = Scan(batch, out, model, delay_score=0.15)
    s.wait_for(scoring_started)
    s.proc.kill()
    s.finish()
    assert (out / "results.csv").read_bytes() == before
    assert_complete(out, 3)
    assert leftovers(out)  # the killed run's lock and temporary folder
    assert main(["scan", str(small), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out), "-q"]) == 0
    assert leftovers(out) == []
    assert_complete(out, 3)


def _exporting(out):
    def check(_s):
        return any(p.is_dir() and any((p / "heatmaps").glob("*.png")) for p in out.parent.glob(f".{out.name}.tmp-*"))
    return check


def test_sigkill_mid_export_leaves_the_previous_run_untouched(model, tmp_path):
    batch = make_batch(tmp_path / "batch", 30)
    out = tmp_path / "out"
    small = make_batch(tmp_path / "small", 3, seed=7)
    assert main(["scan", str(small), "--detector", "pixel-gaussian", "--model", str(model), "--out", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    s = Scan(batch, out, model, delay_map=0.15)
    s.wait_for(_exporting(out))
    s.proc.kill()
    s.finish()
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_sigint_mid_export_finishes_a_complete_run(model, tmp_path):
    batch = make_batch(tmp_path / "batch", 30)
    out = tmp_path / "out"
    s = Scan(batch, out, model, delay_map=0.1)
    s.wait_for(_exporting(out))
    s.proc.send_signal(signal.SIGINT)
    rc, err = s.finish()
    assert rc == 130 and "finishing" in err, err
    assert_complete(out, 30)
    assert leftovers(out) == []


def test_two_scans_into_one_out_never_mix(model, tmp_path):
    a, b = make_batch(tmp_path / "a", 6, seed=1), make_batch(tmp_path / "b", 9, seed=2)
    out = tmp_path / "out"
    runs = [Scan(a, out, model, delay_score=0.3), Scan(b, out, model, delay_score=0.3)]
    results = [r.finish(timeout=180) for r in runs]
    codes = [rc for rc, _ in results]
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "another scan" in err), err
    assert 0 in codes
    r = rows(out / "results.csv")
    parents = {Path(x["path"]).parent.name for x in r}
    assert parents in ({"a"}, {"b"})
    assert_complete(out, 6 if parents == {"a"} else 9)
    assert leftovers(out) == []


def test_second_scan_into_a_busy_out_is_refused(model, tmp_path):
    a, b = make_batch(tmp_path / "a", 60, seed=1), make_batch(tmp_path / "b", 5, seed=2)
    out = tmp_path / "out"
    first = Scan(a, out, model, delay_score=1.0)  # a minute of scoring: it outlives the second
    first.wait_for(scoring_started)  # it holds the lock now
    second = Scan(b, out, model)
    rc2, err2 = second.finish()
    assert first.proc.poll() is None, "the first scan ended too early for this test"
    assert rc2 == 2 and "another scan" in err2 and str(first.proc.pid) in err2, err2
    first.proc.send_signal(signal.SIGINT)
    rc1, err1 = first.finish()
    assert rc1 == 130, err1
    assert {Path(x["path"]).parent.name for x in rows(out / "results.csv")} == {"a"}
    assert json.loads((out / RUN_MARKER).read_text())["complete"] is False
    assert leftovers(out) == []
