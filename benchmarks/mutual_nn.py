"""Exact nearest-patch distances for ``mutual``: one blocked matrix product per image (``search=torch``)
against faiss' exact flat search per reference (``search=faiss``), on random features of the default
shape (784 patches of 224 dimensions: EfficientNet-Lite0 at 224 px, ``stage_weighting=pool``).

One query image against R references, both directions of each pair (what ``mutual`` keeps); the
median of ``--repeat`` runs after a warm-up, in milliseconds per image pair.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mutual_nn.py --json docs/bench/mutual-nn-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.detectors.mutual.scoring import pair_min_distances, squared_norms  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=784)
    ap.add_argument("--dim", type=int, default=224)
    ap.add_argument("--refs", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(args.patches, args.dim, generator=g), dim=1)
    refs = [torch.nn.functional.normalize(torch.randn(args.patches, args.dim, generator=g), dim=1).half()
            for _ in range(args.refs)]
    norms = [squared_norms(r) for r in refs]
    out = {"machine": machine(), "threads": torch.get_num_threads(), "patches": args.patches, "dim": args.dim,
           "refs": args.refs, "ms_per_pair": {}}
    results = {}
    for search in ("torch", "faiss"):
        def run(search=search):
            return pair_min_distances(q, refs, search, both=True, norms=norms if search == "torch" else None)

        results[search] = run()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out["ms_per_pair"][search] = round(1000 * statistics.median(times) / args.refs, 2)
        print(f"{search:>6}: {out['ms_per_pair'][search]:.2f} ms per image pair (both directions)", flush=True)
    diff = float(np.abs(results["torch"][0] - results["faiss"][0]).max())
    out["max_abs_difference"] = diff
    print(f"largest difference between the two: {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
