"""Micro-benchmark: exact nearest-neighbour search for PatchCore, chunked ``torch.cdist``-style
matrix products (``core.detectors.patchcore.anomaly_map.nearest``) against ``faiss-cpu``'s exact
``IndexFlatL2``, at the sizes PatchCore scores at (784 query patches an image, banks of 2k to
60k patches, 224 to 1024 dimensions). faiss is optional (not a dependency): install it into a
separate folder and put that on ``--faiss-path``.

    .venv/bin/python benchmarks/patchcore_nn.py [--faiss-path /tmp/pc_faiss] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.detectors.patchcore.anomaly_map import nearest  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faiss-path", default="", help="folder holding an installed faiss-cpu (pip install --target)")
    ap.add_argument("--queries", type=int, default=784 * 8, help="query patches (default: 8 images of 28 x 28)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    faiss = None
    if args.faiss_path:
        sys.path.insert(0, args.faiss_path)
    try:
        import faiss  # noqa: F811
    except ImportError:
        print("faiss not importable: timing torch only", file=sys.stderr)
    rows = []
    rng = np.random.default_rng(0)
    for bank_n, dim in ((2000, 224), (16000, 224), (60000, 224), (16000, 1024)):
        bank = rng.standard_normal((bank_n, dim), dtype=np.float32)
        q = rng.standard_normal((args.queries, dim), dtype=np.float32)
        tb, tq = torch.from_numpy(bank), torch.from_numpy(q)
        bank_sq = (tb * tb).sum(1)
        t_torch = best_of(lambda tq=tq, tb=tb, bs=bank_sq: nearest(tq, tb, 1, bs), args.repeat)
        row = {"bank": bank_n, "dim": dim, "queries": args.queries, "torch_s": round(t_torch, 4)}
        if faiss is not None:
            index = faiss.IndexFlatL2(dim)
            index.add(bank)
            t_faiss = best_of(lambda index=index, q=q: index.search(q, 1), args.repeat)
            d_f, i_f = index.search(q, 1)
            d_t, i_t = nearest(tq, tb, 1, bank_sq)
            row.update(faiss_s=round(t_faiss, 4), same_index=float((i_f[:, 0] == i_t[:, 0].numpy()).mean()))
        rows.append(row)
        print(row, flush=True)
    out = {"machine": machine(), "faiss": getattr(faiss, "__version__", None), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
