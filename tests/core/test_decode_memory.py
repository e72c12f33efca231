"""Issue 27, finding 12: decode memory is bounded across the streamed scan's workers.

Nothing here depends on timing or on the machine's memory: the budget's logic is checked with
small limits, the reduced decode with a lowered size threshold. The measurement (six 144 M-pixel
PNGs, --workers 4: 7.8 GB peak before, 1.35 GB after) is benchmarks/bench_decode_memory.py,
recorded in docs/reliability.md."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

import core.data.images as images_mod
import core.io.export as export_mod
from core.data.images import DecodeBudget, ImageSource, read_image, read_image_for
from core.data.listing import list_folder
from core.detectors.registry import get_detector_class
from core.engine.scan_run import scan_to_folder
from core.engine.stream_scan import prefetch
from core.engine.workflows import train_detector
from tests.conftest import make_part, write_png


def _wait_until(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def _first_holds_second_waits(budget: DecodeBudget, first: int, second: int) -> list:
    """A thread reserves ``first`` and holds it; another asks for ``second`` and must wait;
    then the first lets go. Returns what each saw on entering: ("first"|"second", bytes in use)."""
    hold, entered = threading.Event(), []

    def run(name, n, wait):
        with budget.reserve(n):
            entered.append((name, budget.used))
            if wait:
                hold.wait(30)

    a = threading.Thread(target=run, args=("first", first, True))
    a.start()
    _wait_until(lambda: len(entered) == 1)
    b = threading.Thread(target=run, args=("second", second, False))
    b.start()
    _wait_until(lambda: budget.waiting == 1)
    assert len(entered) == 1  # the second is still waiting
    hold.set()
    a.join(30)
    b.join(30)
    assert budget.used == 0
    return entered


def test_budget_makes_a_decode_wait_until_it_fits():
    budget = DecodeBudget(100)
    assert _first_holds_second_waits(budget, 60, 60) == [("first", 60), ("second", 60)]  # 60 + 60 > 100
    assert budget.peak == 60


def test_a_decode_larger_than_the_budget_runs_alone_and_is_never_refused():
    budget = DecodeBudget(100)
    assert _first_holds_second_waits(budget, 10, 10_000) == [("first", 10), ("second", 100)]
    assert budget.peak == 100


def test_many_threads_never_hold_more_than_the_budget():
    budget = DecodeBudget(50)
    rng = np.random.default_rng(0)
    sizes = [int(x) for x in rng.integers(1, 40, 200)]
    seen = []

    def work(n):
        with budget.reserve(n):
            seen.append(budget.used)

    threads = [threading.Thread(target=work, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 200 and max(seen) <= 50 and budget.peak <= 50 and budget.used == 0


def test_the_budget_is_sized_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANOMALY_INSPECTOR_DECODE_MIB", "3")
    assert images_mod._budget_limit() == 3 * 1024 * 1024
    monkeypatch.setenv("ANOMALY_INSPECTOR_DECODE_MIB", "lots")
    assert images_mod._budget_limit() == images_mod.DEFAULT_DECODE_MIB * 1024 * 1024


@pytest.fixture
def small_thresholds(monkeypatch):
    """"Very large" starts at 50,000 pixels, every decode takes a share of a 1 MiB budget."""
    monkeypatch.setattr(images_mod, "FULL_DECODE_PIXELS", 50_000)
    monkeypatch.setattr(images_mod, "BUDGET_FROM_BYTES", 0)
    budget = DecodeBudget(1 << 20)
    monkeypatch.setattr(images_mod, "decode_budget", lambda: budget)
    return budget


def test_reduced_decode_keeps_the_long_side_and_reports_the_file_size(tmp_path, small_thresholds):
    rng = np.random.default_rng(1)
    big = (rng.random((400, 600, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    for name in ("big.png", "big.jpg"):
        img, full = read_image_for(tmp_path / name, 100)
        assert full == (400, 600) and img.dtype == np.float32
        assert max(img.shape[:2]) >= 100 and max(img.shape[:2]) < 600, (name, img.shape)
    assert read_image(tmp_path / "big.png").shape[:2] == (400, 600)  # the plain reader: every pixel of a PNG
    small = (rng.random((100, 150)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "small.png"), small)  # under the threshold: decoded whole
    img, full = read_image_for(tmp_path / "small.png", 10)
    assert img.shape[:2] == full == (100, 150)
    assert 0 < small_thresholds.peak <= small_thresholds.limit


def test_prefetch_decodes_within_the_budget(tmp_path, small_thresholds):
    rng = np.random.default_rng(2)
    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), (rng.random((300, 300, 3)) * 255).astype(np.uint8))
        paths.append(p)
    got = list(prefetch(paths, workers=4, window=8, max_side=64))
    assert [k for k, _ in got] == list(range(12))
    assert all(full == (300, 300) and max(img.shape[:2]) < 300 for _, (img, full) in got)
    assert 0 < small_thresholds.peak <= small_thresholds.limit


def test_streamed_scan_of_a_very_large_image_decodes_small_and_maps_at_full_size(tiny_parts, tmp_path,
                                                                                   small_thresholds, monkeypatch):
    monkeypatch.setattr(export_mod, "BANDED_FROM_PIXELS", 10_000)  # its heat map is coloured in bands
    cls = get_detector_class("pixel-gaussian")
    det = cls(cls.config_class(image_size=16, blur_sigma=1.0), device="cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    seen = []
    real = det._score_batch
    monkeypatch.setattr(det, "_score_batch", lambda imgs: seen.extend(i.shape[:2] for i in imgs) or real(imgs))
    monkeypatch.setattr(det, "decode_side", lambda: 64)
    batch = tiny_parts / "batch"
    big = cv2.resize(cv2.imread(str(batch / "bad0.png")), (900, 600), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(batch / "zz_big.png"), big)
    out = scan_to_folder(list_folder(batch), tmp_path / "out", lambda: det, workers=3)
    assert out.scored == 9
    assert (43, 64) in seen and (600, 900) not in seen  # decoded reduced (long side 64), never whole
    heat = cv2.imread(str(tmp_path / "out" / "heatmaps" / "zz_big.png"))
    assert heat.shape[:2] == (600, 900)  # the heat map has the file's size


def test_banded_colouring_matches_the_whole_map_colouring():
    from core.io.colormap import colorize

    rng = np.random.default_rng(3)
    m = cv2.GaussianBlur(rng.random((37, 53)).astype(np.float32), (0, 0), 3)
    lo, hi = float(m.min()), float(m.max())
    for h, w in ((500, 700), (123, 457)):
        banded = export_mod._colour_in_bands(m, h, w, lo, hi, rows=64)
        whole = colorize(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR), lo, hi)[:, :, ::-1]
        diff = np.abs(banded.astype(int) - whole.astype(int))
        assert diff.max() <= 4 and (diff > 0).mean() < 1e-3  # rounding at a colour step, nothing more


def test_a_large_camera_image_still_decodes_whole_for_the_plain_reader(tmp_path):
    write_png(tmp_path / "x.png", make_part(np.random.default_rng(0), size=64))
    img, full = read_image_for(tmp_path / "x.png", 16)  # far under the "very large" threshold
    assert img.shape[:2] == full == (64, 64)
