"""Where a PatchCore scan's CPU time goes, stage by stage, one thread (issue 28).

Loads a saved ``patchcore`` model and times each stage of scoring one image, on one thread so
that the figures add up to the CPU a scan spends per image (``bench``'s ``score_cpu_seconds``
divided by the images, minus the threads' waiting): decode (the file to uint8 and then float32),
the working frame (resize to the network's input), the network on the model's runtime, the bank
search, the map (upsample, blur, back to the image's size) and the stored map (``compact_map``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scan_budget.py MODEL_DIR DATASET \\
        [--runtime openvino --precision bfloat16] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import test_sample, write_report  # noqa: E402
from core.data.images import _decode_plain_png, read_image  # noqa: E402
from core.detectors.common import map_to_input  # noqa: E402
from core.detectors.exporting import apply_runtime  # noqa: E402
from core.detectors.patchcore.inputs import to_frame  # noqa: E402
from core.detectors.registry import load_model  # noqa: E402
from core.results import compact_map  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    det = load_model(args.model, device="cpu")
    det = apply_runtime(det, args.runtime, args.precision)
    paths = test_sample(args.dataset, 4, args.images)
    stages: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.process_time()
        out = fn(*a)
        stages[name] = stages.get(name, 0.0) + time.process_time() - t0
        return out

    def decode_uint8(raw):  # the decoder read_image uses: the fast PNG one where installed, else OpenCV
        arr = _decode_plain_png(raw) if bytes(raw[:4]) == b"\x89PNG" else None
        return arr if arr is not None else cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)

    raw_reads = [np.fromfile(p, dtype=np.uint8) for p in paths]
    det._score_batch([read_image(paths[0])])  # warm-up (runtime compile, index)
    for p, raw in zip(paths, raw_reads):
        img8 = timed("decode: file to uint8", decode_uint8, raw)
        img = timed("decode: to float32 (and channels)", read_image, p)
        crops, _ = det._crops(img)
        frame = det._frame(crops[0])
        timed("working frame (resize)", to_frame, crops[0], frame, det.config.resample)
        feats = timed("network + frame", det._features, crops)
        nearest = timed("bank search", det._distances, [f.feats for f in feats])
        score, amap = timed("map at working size (upsample, blur) + score", det._scored, feats[0], *nearest[0])
        full = timed("map back to the image's size", map_to_input, amap, img.shape[:2])
        timed("stored map (compact_map)", compact_map, full)
        del img8
    # read_image decodes too: its float share is the difference to the plain decode
    stages["decode: to float32 (and channels)"] -= stages["decode: file to uint8"]
    stages["network"] = stages.pop("network + frame") - stages["working frame (resize)"]
    n = len(paths)
    rows = {k: 1000 * v / n for k, v in stages.items()}
    rows["total"] = sum(rows.values())
    for k, v in rows.items():
        print(f"{k:48s} {v:7.1f} ms")
    write_report(args.json, {"model": str(args.model), "dataset": str(args.dataset), "images": n,
                             "runtime": det.runtime, "search": det.neighbour_search(), "cpu_ms_per_image": rows,
                             "threads": 1})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
