"""Nearest-neighbour search of a trained PatchCore model, backend by backend (issue 28).

Loads a saved ``patchcore`` model, extracts the patch features of a seeded sample of the data
set's test images (every ``--every``-th, up to ``--images``), and times each bank search
(``bf16``: the bf16 product with a float32 decision, ``faiss``: faiss's flat L2, ``torch``:
chunked float32 products) one image at a time, as scoring calls it. Each backend's distances are
compared with a float64 search (largest relative error, nearest indices that differ), and the bf16
search's candidates a query are counted.

    .venv/bin/python benchmarks/bench_nn_search.py MODEL_DIR DATASET [--json OUT.json]

Run it with nothing else on the machine for the times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import test_sample, write_report  # noqa: E402
from core.data.images import read_image  # noqa: E402
from core.detectors.patchcore.anomaly_map import BankIndex, faiss_available  # noqa: E402
from core.detectors.patchcore.bf16_search import accumulates_in_float32  # noqa: E402
from core.detectors.registry import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    det = load_model(args.model, device="cpu")
    picked = [read_image(p) for p in test_sample(args.dataset, args.every, args.images)]
    queries = [f.feats.reshape(-1, f.feats.shape[-1]).float().contiguous() for f in det._features(picked)]
    bank = det.bank.float().cpu()
    exact = [torch.cdist(q.double(), bank.double()).min(1) for q in queries]
    backends = ["torch"] + (["faiss"] if faiss_available() else []) + (["bf16"] if accumulates_in_float32() else [])
    rows = []
    for name in backends:
        index = BankIndex(bank, backend=name)
        for q in queries[:2]:
            index.search(q, 1)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            found = [index.search(q, 1) for q in queries]
            best = min(best, time.perf_counter() - t0)
        rel = max(float(((d[:, 0].double() - e.values).abs() / e.values.clamp_min(1e-12)).max())
                  for (d, _), e in zip(found, exact))
        differ = sum(int((i[:, 0] != e.indices).sum()) for (_, i), e in zip(found, exact))
        row = {"backend": name, "ms_per_image": 1000 * best / len(queries), "max_relative_error": rel,
               "indices_differing": differ}
        if name == "bf16":
            index._bf16.candidates = 0
            for q in queries:
                index.search(q, 1)
            row["candidates_per_query"] = index._bf16.candidates / sum(q.shape[0] for q in queries)
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_report(args.json, {"model": str(args.model), "dataset": str(args.dataset), "images": len(queries),
                             "queries_per_image": queries[0].shape[0], "bank": list(bank.shape),
                             "threads": torch.get_num_threads(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
