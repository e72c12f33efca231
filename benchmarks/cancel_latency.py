"""Cancel-to-idle latency: how long after Cancel each detector's job really stops, on the CPU.

For every registered, available detector (default settings) and both kinds of work the GUI
runs — training (:class:`~core.engine.jobs.FitJob`) and scoring
(:class:`~core.engine.jobs.ScanJob`) — the job is started on the GUI's own
:class:`~core.engine.qt_bridge.JobRunner`, cancelled ``--after`` seconds into its work, and
the time from ``cancel`` to the runner's ``finished`` signal (the moment the window goes
idle) is measured. The images are the demo sample (``core.data.sample``, 256 px: ``--good``
good parts to train on, and its 36 parts to inspect listed ``--copies`` times, so that even the
fast detectors are still at work when Cancel comes); zero-shot detectors have no training row (their model, if any, is built
inside scoring, which is what their scoring row cancels).

To have a model to score with, a trained detector is first fitted on 16 good images with its
defaults except ``epochs=1`` (when the config has that field): how long training ran changes
the weights, not how one scoring step runs. A job that ends on its own before the cancel
is reported as such (no latency).

    .venv/bin/python benchmarks/cancel_latency.py [--after 2] [--repeat 3] [--detector NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QCoreApplication, QEventLoop  # noqa: E402

from benchmarks._common import machine  # noqa: E402
from core.data.images import ImageSource, list_images  # noqa: E402
from core.data.sample import generate_sample  # noqa: E402
from core.detectors.config import DetectorConfig  # noqa: E402
from core.detectors.registry import REGISTRY, create_detector  # noqa: E402
from core.engine.jobs import FitJob, ScanJob  # noqa: E402
from core.engine.qt_bridge import JobRunner  # noqa: E402
from core.engine.workflows import train_detector  # noqa: E402

TARGET = 1.0  # seconds: the aim for Cancel-to-idle
QUICK_FIT_IMAGES = 16  # good images of the one-epoch fit that gives the scoring rows a model


def _wait(app: QCoreApplication, until, timeout: float) -> bool:
    """Process events until ``until()`` or ``timeout`` seconds; returns ``until()``."""
    end = time.monotonic() + timeout
    while not until() and time.monotonic() < end:
        app.processEvents(QEventLoop.AllEvents, 20)
        time.sleep(0.002)
    return bool(until())


def cancel_once(app: QCoreApplication, runner: JobRunner, job, after: float, limit: float) -> dict:
    """Start ``job``, cancel it ``after`` seconds in, and time Cancel -> finished."""
    state: dict = {}
    mine: list[int] = []  # signals of an earlier job still winding down are not this one's

    def note(key: str, value) -> None:
        if mine and mine[0] == value[0]:
            state.setdefault(key, value[1])

    runner.finished.connect(lambda jid: note("finished", (jid, time.perf_counter())))
    runner.cancelled.connect(lambda jid: note("outcome", (jid, "cancelled")))
    runner.succeeded.connect(lambda jid, _r: note("outcome", (jid, "finished before the cancel")))
    runner.failed.connect(lambda jid, msg, _tb: note("outcome", (jid, f"failed: {msg}")))
    t_start = time.perf_counter()
    jid = runner.submit(job)
    mine.append(jid)
    _wait(app, lambda: "finished" in state, after)
    if "finished" in state:
        runner.finished.disconnect()
        runner.cancelled.disconnect()
        runner.succeeded.disconnect()
        runner.failed.disconnect()
        return {"outcome": state.get("outcome", "?"), "latency_s": None,
                "ran_s": round(state["finished"] - t_start, 3)}
    t_cancel = time.perf_counter()
    runner.cancel(jid)
    done = _wait(app, lambda: "finished" in state, limit)
    t_end = state["finished"] if done else time.perf_counter()
    for sig in (runner.finished, runner.cancelled, runner.succeeded, runner.failed):
        sig.disconnect()
    if not done:  # still running: wait for it so that the next measurement starts idle
        runner.shutdown(600_000)
    return {"outcome": state.get("outcome", f"still running after {limit:.0f} s") if done else
            f"still running after {limit:.0f} s", "latency_s": round(t_end - t_cancel, 4) if done else None,
            "ran_s": round(t_cancel - t_start, 3)}


def write_json(out: Path, rows: list[dict], args: argparse.Namespace, n_scored: int) -> None:
    """Write (after every row, so a long run keeps what it measured) the rows measured now over
    those of earlier runs of other detectors / phases in the same file."""
    old = json.loads(out.read_text(encoding="utf-8"))["rows"] if out.exists() else []
    mine = {(r["detector"], r["phase"]) for r in rows}
    kept = [r for r in old if (r["detector"], r["phase"]) not in mine]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "repeat": args.repeat, "target_s": TARGET, "n_good": args.good,
                               "n_scored": n_scored, "limit_s": args.limit, "date": time.strftime("%Y-%m-%d"),
                               "rows": kept + rows}, indent=2) + "\n", encoding="utf-8")


def quick_fit_overrides(name: str) -> dict:
    cfg_cls: type[DetectorConfig] = REGISTRY[name].config_class
    return {"epochs": 1} if "epochs" in {f for f in cfg_cls.__dataclass_fields__} else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=120, help="good sample images to train on (default 120)")
    ap.add_argument("--copies", type=int, default=8, help="times the 36 inspected images are listed (default 8)")
    ap.add_argument("--after", type=float, default=1.0, help="seconds into the job at which Cancel is pressed")
    ap.add_argument("--repeat", type=int, default=3, help="cancellations per detector and phase (median shown)")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds to wait for a job to stop after Cancel")
    ap.add_argument("--detector", action="append", help="only these detectors (repeatable; default all)")
    ap.add_argument("--phase", choices=("training", "scoring"), help="only this job (default both)")
    ap.add_argument("--json", metavar="OUT.json", help="write the measurements as JSON")
    args = ap.parse_args()
    app = QCoreApplication.instance() or QCoreApplication([])
    runner = JobRunner()
    names = args.detector or list(REGISTRY)
    sample = generate_sample(Path(tempfile.mkdtemp(prefix="cancel-latency-")) / "sample", n_good=args.good)
    batch = ImageSource(list_images(sample / "batch") * args.copies)
    print(f"# cancel-to-idle on the CPU: {machine()}")
    print(f"# sample {sample} ({len(ImageSource.from_folder(sample / 'good'))} good, {len(batch)} to inspect); "
          f"cancel {args.after:g} s into each job; median (max) of {args.repeat}")
    print(f"{'detector':<17} {'phase':<8} {'median s':>9} {'max s':>7}  outcome", flush=True)
    rows = []
    for name in names:
        cls = REGISTRY[name]
        ok, reason = cls.availability()
        if not ok:
            print(f"{name:<17} unavailable: {reason}")
            continue
        phases = []
        if not cls.zero_shot and args.phase in (None, "training"):
            phases.append(("training", lambda n=name: FitJob(n, sample / "good", device="cpu")))
        det = create_detector(name, quick_fit_overrides(name) if not cls.zero_shot else {}, "cpu")
        if args.phase in (None, "scoring"):
            if not cls.zero_shot:
                t0 = time.perf_counter()
                train_detector(det, ImageSource(list_images(sample / "good")[:QUICK_FIT_IMAGES]))
                print(f"# {name}: fitted in {time.perf_counter() - t0:.1f} s for the scoring rows "
                      f"({quick_fit_overrides(name) or 'defaults'})", flush=True)
            phases.append(("scoring", lambda d=det: ScanJob(d, batch, keep_extras=True)))
        for phase, make_job in phases:
            runs = [cancel_once(app, runner, make_job(), args.after, args.limit) for _ in range(args.repeat)]
            lat = [r["latency_s"] for r in runs if r["latency_s"] is not None]
            med = statistics.median(lat) if lat else None
            worst = max(lat) if lat else None
            outcomes = sorted({r["outcome"] for r in runs})
            print(f"{name:<17} {phase:<8} {med if med is not None else float('nan'):9.3f} "
                  f"{worst if worst is not None else float('nan'):7.3f}  {', '.join(outcomes)}", flush=True)
            rows.append({"detector": name, "phase": phase, "median_s": med, "max_s": worst,
                         "under_target": None if worst is None else worst < TARGET, "after_s": args.after,
                         "repeat": args.repeat, "limit_s": args.limit,
                         "runs": runs, "config": det.config.to_dict() if phase == "scoring" else
                         create_detector(name, {}, "cpu").config.to_dict()})
            if args.json:
                write_json(Path(args.json), rows, args, len(batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
