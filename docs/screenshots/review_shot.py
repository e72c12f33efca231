"""Take docs/screenshots/review_bottle.png (and review_bottle_1366x768.png): a bottle batch under
review (offscreen), at the window size given last (default 1600x1000).

    QT_QPA_PLATFORM=offscreen ANOMALY_INSPECTOR_HOME=$(mktemp -d) python docs/screenshots/review_shot.py \
        ../shared/datasets/mvtec_ad/bottle/test ../shared/datasets/mvtec_ad/bottle/train/good out.png [1366x768]

Drives the real window as an inspector would: scan (recursive) with pixel-gaussian, a review
band around the threshold, the "to review" walk, a few verdicts (one disagreeing) and a note;
then the whole batch by score, with the verdicts beside the detector's flags.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from app.gui import apply_style
from app.main_window import MainWindow


def main(folder: str, good: str, out: str, size: str = "1600x1000") -> int:
    width, height = (int(v) for v in size.split("x"))
    app = QApplication.instance() or QApplication([])
    apply_style(app)
    scratch = tempfile.mkdtemp()
    win = MainWindow(settings=QSettings(str(Path(scratch) / "s.ini"), QSettings.IniFormat), cuda_available=False)
    win.ask_before_discarding = False
    win.resize(width, height)
    win.show()
    c = win.controller
    step = {"n": 0}

    def idle() -> bool:
        return not c.busy and not any(c.helper_running(k) for k in ("list", "thumbnails", "range", "image"))

    def tick() -> None:
        n = step["n"]
        if n == 0:
            win.set_good_folder(good)
            win.select_detector("pixel-gaussian")
            c.open_folder(folder, recursive=True)
            step["n"] = 1
        elif n == 1 and c.folder is not None and idle():
            assert win.run_detector()
            step["n"] = 2
        elif n == 2 and c.result is not None and idle():
            scores = sorted(r.score for r in c.result.rows)
            t = c.threshold.value
            below = [s for s in scores if s <= t]
            c.set_review_band(below[int(len(below) * 0.8)], scores[int(len(scores) * 0.85)])
            win.toggle_to_review()
            queue = c.review_queue()
            for p in queue[:4]:
                c.set_verdict(p, "ng")
            c.set_verdict(queue[4], "ok")  # flagged, but the inspector passes it: disagrees
            c.set_note(queue[4], "dust on the lens, part is fine")
            c.set_verdict(queue[5], "unsure")
            win.toggle_to_review()  # off again, sorted by score: the verdicts beside the flags
            win.gallery.set_sort_by_score(True)
            win.gallery.select_path(queue[4])
            win.docks["grouping"].hide()
            step["n"] = 3
        elif n == 3 and idle():
            step["n"] = 4
            QTimer.singleShot(800, finish)

    def finish() -> None:
        ok = win.grab().save(out)
        print(f"{'wrote' if ok else 'could not write'} {out}; {win.review_counters()}", file=sys.stderr)
        win.close()
        app.exit(0 if ok else 1)

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(100)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
