"""``mutual`` on a batch that grew: what a re-run reuses and what it costs (issue 25).

The detector first scores the dataset's training images (a session's first run), then the whole
batch, training and test images together (the re-run after the new images came in), with the same
detector object, whose content-keyed cache keeps the first run's image features and pair
distances. A fresh detector then scores the whole batch from scratch; the largest difference
between the two runs' scores says whether the re-use changed anything.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mutual_incremental.py ../shared/datasets/mvtec_ad/bottle \\
        --json docs/bench/mutual-incremental-bottle.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.data.images import ImageSource  # noqa: E402
from core.detectors.registry import create_detector  # noqa: E402
from core.engine.bench import load_bench_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="mutual settings")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sets = dict(kv.split("=", 1) for kv in args.set)
    ds = load_bench_dataset(args.dataset)
    first = ImageSource(list(ds.train))
    grown = ImageSource(list(ds.train) + [s.path for s in ds.test])
    det = create_detector("mutual", sets, "cpu")
    out = {"machine": machine(), "dataset": args.dataset, "settings": det.config.to_dict(), "runs": []}

    def run(name, d, source):
        t0 = time.perf_counter()
        res = d.score(source)
        sec = time.perf_counter() - t0
        out["runs"].append({"run": name, "images": len(source), "seconds": round(sec, 1), **d.stats.to_dict()})
        print(f"{name:<28} {len(source):>5} images {sec:7.1f} s  {d.stats.to_dict()}", flush=True)
        return np.array([res[i].score for i in sorted(res)])

    run("first run (training images)", det, first)
    again = run("re-run, grown batch", det, grown)
    scratch = run("from scratch, grown batch", create_detector("mutual", sets, "cpu"), grown)
    out["max_abs_score_difference"] = float(np.abs(again - scratch).max())
    print(f"largest score difference, re-run against from scratch: {out['max_abs_score_difference']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
