"""PatchCore's bench with an *approximate* bank search in place of the exact one (issue 28).

The exact search is what caps an MTD scan on 2 cores (about 20 ms of CPU an image); issue 28's
rule lets a lever in if it keeps image AUROC within 0.005. This script measures faiss's two usual
approximate indexes on a saved model, through the ordinary ``bench`` (same runtime, lanes,
decoding, metrics), by replacing the detector's bank index:

- ``hnsw:M:EF`` — ``IndexHNSWFlat`` with M links, ``efConstruction`` 80, ``efSearch`` EF;
- ``ivf:NLIST:NPROBE`` — ``IndexIVFFlat`` on NLIST k-means cells (seed 0), NPROBE searched.

Both are built on one thread (a parallel HNSW build depends on the threads' timing; one thread
makes the index, and so the scores, the same each run).

    APPROX=ivf:128:8 .venv/bin/python benchmarks/bench_approx_search.py bench DATA --detector patchcore \\
        --model MODEL --device cpu -q --json OUT.json

Not part of the product: docs/benchmarks.md ("Approximate bank searches") says why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class ApproxIndex:
    """``BankIndex``'s interface (``bank``, ``backend``, ``search(queries, k)``) on a faiss
    approximate index described by ``spec`` (module docstring)."""

    def __init__(self, bank: torch.Tensor, spec: str) -> None:
        import faiss

        kind, a, b = spec.split(":")
        self.bank, self.backend = bank, spec
        x = np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32)
        d = x.shape[1]
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            if kind == "hnsw":
                self.index = faiss.IndexHNSWFlat(d, int(a))
                self.index.hnsw.efConstruction = 80
                self.index.add(x)
                self.index.hnsw.efSearch = int(b)
            elif kind == "ivf":
                self.quantizer = faiss.IndexFlatL2(d)  # kept: the IVF index does not own it
                self.index = faiss.IndexIVFFlat(self.quantizer, d, int(a))
                self.index.cp.seed = 0
                self.index.train(x)
                self.index.add(x)
                self.index.nprobe = int(b)
            else:
                raise ValueError(f"unknown approximate index '{spec}' (hnsw:M:EF or ivf:NLIST:NPROBE)")
        finally:
            faiss.omp_set_num_threads(before)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        d2, idx = self.index.search(q, min(k, self.bank.shape[0]))
        return (torch.from_numpy(d2).clamp_min_(0.0).sqrt_().to(queries.device),
                torch.from_numpy(idx).long().to(queries.device))


def use_approx(spec: str) -> None:
    """Every PatchCore detector of this process searches its bank with ``ApproxIndex(spec)``."""
    from core.detectors.patchcore import detector as patchcore

    def bank_index(self):
        if self._index is None or self._index.bank is not self.bank:
            self._index = ApproxIndex(self.bank, spec)
        return self._index

    patchcore.PatchCoreDetector._bank_index = bank_index


def main(argv: list[str]) -> int:
    use_approx(os.environ["APPROX"])
    from app.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
