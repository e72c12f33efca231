"""Micro-benchmark: per-detector scoring throughput on synthetic in-memory images.

For every registered, available detector (default config) and a few input sizes it fits on
``--train`` synthetic good images, scores one untimed warm-up batch, then times
``Detector.score`` on ``--n`` images already in memory (float32 RGB arrays, so no decoding:
that is ``bench_decode.py``). Maps are returned at the input size, as in a real scan.
On a GPU the device is synchronised before the clock stops.

    .venv/bin/python benchmarks/bench_scoring.py [--sizes 128,512,1024] [--n 64] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.data.images import ImageSource  # noqa: E402
from core.detectors.registry import REGISTRY, create_detector  # noqa: E402


def synthetic(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth random RGB images, float32 in [0, 1]."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((16, 16, 3), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return [np.clip(base + rng.normal(0, 0.02, base.shape).astype(np.float32), 0, 1) for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,512,1024", help="input sizes, comma-separated (default 128,512,1024)")
    ap.add_argument("--n", type=int, default=64, help="images scored per measurement (default 64)")
    ap.add_argument("--train", type=int, default=32, help="synthetic good images to fit on (default 32)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats; the median is shown (default 3)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--detector", action="append", help="only these detectors (repeatable; default all)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = args.detector or list(REGISTRY)
    print(f"# scoring benchmark: {machine()}")
    print(f"{'detector':<16} {'device':<7} {'input':>9} {'batch':>5} {'img/s':>9} {'ms/img':>8}")
    for name in names:
        ok, reason = REGISTRY[name].availability()
        if not ok:
            print(f"{name:<16} unavailable: {reason}")
            continue
        for size in sizes:
            det = create_detector(name, device=args.device)
            det.fit(ImageSource(synthetic(args.train, size, 0)))
            images = ImageSource(synthetic(args.n, size, 1))
            det.score(images.subset(range(min(det.config.batch_size, len(images)))))  # warm-up
            times = []
            for _ in range(args.repeat):
                if det.device.type == "cuda":
                    torch.cuda.synchronize(det.device)
                t0 = time.perf_counter()
                det.score(images)
                if det.device.type == "cuda":
                    torch.cuda.synchronize(det.device)
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            print(f"{name:<16} {str(det.device):<7} {f'{size}x{size}':>9} {det.config.batch_size:>5} "
                  f"{args.n / med:9.1f} {1000 * med / args.n:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
