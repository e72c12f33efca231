"""Issue 18, acceptance 2: a streamed scan's peak memory does not grow with the image count.

Two ``scan`` subprocesses score 150 and 1,500 synthetic 96 px images with a tiny
``pixel-gaussian`` model; the kernel's peak RSS of each (``os.wait4``) may differ by at most
a generous 20 MiB. The in-memory scan this replaced kept every row's map (96 x 96 float16,
18 KiB) until the end: about 30 MiB more for the larger folder (measured: docs/benchmarks.md).
"""

import os

import pytest

from benchmarks.bench_stream_scan import make_images, run_cli
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak RSS of a child needs os.wait4 (POSIX)")


def peak_rss(root, folder, model, out):
    rc, _, rss, err = run_cli(["scan", str(folder), "--detector", "pixel-gaussian", "--model", str(model),
                               "--out", str(out), "-q"], root, env={"OMP_NUM_THREADS": "1"})
    assert rc == 0, err
    return rss


def test_peak_rss_is_flat_in_the_number_of_images(tmp_path):
    good = make_images(tmp_path / "good", 20, size=96, seed=1)
    rc, _, _, err = run_cli(["train", str(good), "--detector", "pixel-gaussian", "--model", str(tmp_path / "model"),
                             "--set", "image_size=16", "--set", "blur_sigma=1", "-q"], ROOT)
    assert rc == 0, err
    small = peak_rss(ROOT, make_images(tmp_path / "small", 150, size=96), tmp_path / "model", tmp_path / "o1")
    large = peak_rss(ROOT, make_images(tmp_path / "large", 1500, size=96), tmp_path / "model", tmp_path / "o2")
    assert len(list((tmp_path / "o2" / "heatmaps").iterdir())) == 1500
    assert large - small < 20, f"peak RSS {small:.0f} MiB for 150 images, {large:.0f} MiB for 1,500"
