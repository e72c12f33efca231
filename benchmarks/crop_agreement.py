"""Crop training against whole-image training: do the maps agree? (issue 17)

The VQ-VAE and the score U-Net are fully convolutional, so they are trained on random crops of
the working-resolution images (``train_crop``) and score whole images. This script trains the
same detector twice on the same good images with the same number of optimizer steps (``--epochs``;
or the same time budget, ``--minutes``) — once on whole images, once on crops — scores the test
split with both, and reports for each model the image and
pixel AUROC, and between the two the per-image Pearson correlation of their maps (at the
256 px evaluation size) and the Spearman correlation of their image scores.

    .venv/bin/python benchmarks/crop_agreement.py --detector vqvae --size 64 --crop 32 --epochs 12 \
        --json docs/bench/crop-agreement-vqvae-cpu.json
    .venv/bin/python benchmarks/crop_agreement.py --detector score-resilience --size 64 --crop 32 --epochs 12 \
        --set block_out_channels=32,64,128,128 --set norm_num_groups=8 --set smooth_size=11

A small working size keeps the whole-image model trainable on a CPU; the question is whether
crops change what the model learns, which does not need the paper's resolution. Equal steps
(the default) make the comparison independent of the machine's load; the crop model then has
seen a quarter of the pixels (crop 32 of 64).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, machine  # noqa: E402
from core.data.images import ImageSource  # noqa: E402
from core.data.layouts import read_mask  # noqa: E402
from core.detectors.registry import create_detector  # noqa: E402
from core.engine.bench import EVAL_SIZE, load_bench_dataset  # noqa: E402
from core.metrics import compute_all  # noqa: E402

MAP_SIZE = EVAL_SIZE


def _resize(m: np.ndarray) -> np.ndarray:
    return cv2.resize(m.astype(np.float32), (MAP_SIZE, MAP_SIZE), interpolation=cv2.INTER_AREA)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return _pearson(ra.astype(np.float64), rb.astype(np.float64))


def run(args: argparse.Namespace) -> dict:
    data = load_bench_dataset(args.data, seed=0)
    train = ImageSource(list(data.train))
    test = data.test
    labels = np.array([s.label for s in test])
    masks = [read_mask(s.mask, (MAP_SIZE, MAP_SIZE)) if s.mask is not None else None for s in test]
    extra = dict(kv.split("=", 1) for kv in args.set)
    out: dict = {"machine": machine(), "command": " ".join(sys.argv), "detector": args.detector,
                 "size": args.size, "crop": args.crop, "epochs": args.epochs if args.minutes is None else None,
                 "minutes": args.minutes, "models": {}}
    maps, scores = {}, {}
    for kind, crop in (("whole", 0), ("crop", args.crop)):
        budget = ({"epochs": args.epochs, "max_minutes": 0} if args.minutes is None else
                  {"epochs": 100000 if args.detector == "score-resilience" else 10000, "max_minutes": args.minutes})
        det = create_detector(args.detector, {**extra, "image_size": args.size, "train_crop": crop, **budget, "seed": 0},
                              device=args.device)
        t0 = time.perf_counter()
        det.fit(train)
        fit_s = time.perf_counter() - t0
        res = det.score(ImageSource([s.path for s in test]))
        maps[kind] = [_resize(res[i].anomaly_map) for i in range(len(test))]
        scores[kind] = np.array([res[i].score for i in range(len(test))])
        metrics = compute_all(labels, scores[kind], None, masks, maps[kind], size=MAP_SIZE)
        out["models"][kind] = {"train_crop": crop, "fit_seconds": round(fit_s, 1),
                               "steps": det.meta.get("steps"), "epochs": len(det.meta.get("loss_history", [])),
                               "final_loss": det.meta.get("final_loss"),
                               "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"],
                               "aupro": metrics["aupro"]}
        print(json.dumps({kind: out["models"][kind]}), flush=True)
    r = np.array([_pearson(a, b) for a, b in zip(maps["whole"], maps["crop"])])
    out["map_pearson_mean"] = float(np.nanmean(r))
    out["map_pearson_min"] = float(np.nanmin(r))
    out["score_spearman"] = _spearman(scores["whole"], scores["crop"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", required=True, choices=["vqvae", "score-resilience"])
    ap.add_argument("--data", type=Path, default=DATASETS / "mvtec_ad" / "bottle")
    ap.add_argument("--size", type=int, default=64, help="working resolution of both models")
    ap.add_argument("--crop", type=int, default=32, help="train_crop of the crop model")
    ap.add_argument("--epochs", type=int, default=12, help="training epochs of each model (same steps)")
    ap.add_argument("--minutes", type=float, help="instead: the same time budget for each model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more detector settings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = run(args)
    print(json.dumps({k: v for k, v in out.items() if k != "models"}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
