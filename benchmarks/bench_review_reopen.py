"""Reopening a folder in the window: time until the gallery shows the restored run's scores.

Writes ``--n`` small synthetic parts (``--size`` px PNGs), trains pixel-gaussian on a few,
scans the folder in one window (into the folder's session), closes it, then opens the folder
in a fresh window and measures (offscreen, in-process) the time from ``open_folder`` to the
restored result being shown (``result_changed``: gallery scores and flags, histogram), and to
the heat maps of the whole run being decoded (helper job).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_review_reopen.py --n 5000 \
        [--json docs/bench/review_reopen_5000.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-reopen-"))
    os.environ["ANOMALY_INSPECTOR_HOME"] = str(tmp / "home")

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from tests.conftest import make_part, write_png

    rng = np.random.default_rng(0)
    folder, good = tmp / "batch", tmp / "good"
    for i in range(a.n):
        write_png(folder / f"p{i:05d}.png", make_part(rng, defect=i % 10 == 0, size=a.size))
    for i in range(12):
        write_png(good / f"g{i:02d}.png", make_part(rng, defect=False, size=a.size))
    app = QApplication.instance() or QApplication([])

    def window() -> MainWindow:
        w = MainWindow(settings=QSettings(str(tmp / "s.ini"), QSettings.IniFormat), cuda_available=False)
        w.ask_before_discarding = False
        w.show()
        return w

    def wait(cond, limit=3600.0) -> float:
        t0 = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.002)
            if time.perf_counter() - t0 > limit:
                raise TimeoutError
        return time.perf_counter() - t0

    w = window()
    c = w.controller
    c.open_folder(folder)
    wait(lambda: c.folder is not None and not c.busy)
    w.set_good_folder(str(good))
    for k, v in {"image_size": a.size, "batch_size": 64}.items():
        w.detector_panel.form.set_value(k, v)
    w.select_detector("pixel-gaussian")
    assert w.run_detector()
    scan_s = wait(lambda: c.result is not None and not c.busy)
    w.close()

    w = window()
    c = w.controller
    t0 = time.perf_counter()
    c.open_folder(folder)
    wait(lambda: c.result is not None)
    shown = time.perf_counter() - t0
    wait(lambda: all(r.anomaly_map is not None for r in c.result.rows))
    maps = time.perf_counter() - t0
    db = c.session.path
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    out = {"n": a.n, "image_px": a.size, "map_px": a.size, "scan_s": round(scan_s, 2),
           "reopen_to_scores_shown_s": round(shown, 3), "reopen_to_all_maps_s": round(maps, 3),
           "session_mib": round(size / 2**20, 1), "python": platform.python_version(),
           "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    w.close()
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
