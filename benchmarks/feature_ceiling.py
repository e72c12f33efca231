"""How far can the frozen features of DifferNet and SANF go? (issue 17)

DifferNet and SANF fit a normalizing flow to the features of a *frozen* pretrained network:
they can at best model the density of those features. This script measures what the same
features give under two training-free density estimates — a Gaussian (Mahalanobis distance,
Ledoit-Wolf shrinkage) and the distance to the nearest training image — fitted on the training
split and scored on the test split, untransformed images (T = 1). A flow that reaches about
these AUROCs has learnt what the features hold; a target far above them needs other features
(a different backbone), not a longer training.

    .venv/bin/python benchmarks/feature_ceiling.py ../shared/datasets/mtd --features differnet \
        --json docs/bench/mtd-feature-ceiling-differnet-lite0-cpu.json
    .venv/bin/python benchmarks/feature_ceiling.py ../shared/datasets/mtd --features sanf
    .venv/bin/python benchmarks/feature_ceiling.py ../shared/datasets/mtd --features differnet \
        --set backbone=efficientnet-lite2

``--set`` takes the detector's settings (``backbone``, ``image_size``, ``efficientnet_features``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.data.images import ImageSource, iter_batches  # noqa: E402
from core.detectors.common import to_tensor_batch  # noqa: E402
from core.detectors.registry import create_detector  # noqa: E402
from core.engine.bench import load_bench_dataset  # noqa: E402
from core.metrics.auroc import image_auroc  # noqa: E402


def extractor(kind: str, settings: dict):
    """(settings used, function mapping a list of images to an (N, D) feature array)."""
    det = create_detector(kind, settings, device="cpu")
    cfg = det.config
    if kind == "differnet":
        from core.detectors.differnet.detector import resolve_backbone

        model = det._build(resolve_backbone(cfg)).eval()

        def feats(images):
            return model.features(to_tensor_batch(images, cfg.image_size, 3).clamp_(0.0, 1.0))
    else:
        from core.detectors.sanf.detector import resolve_backbone

        model = det._build(resolve_backbone(cfg)).eval()

        def feats(images):
            sem, tok = model.tokens(to_tensor_batch(images, cfg.image_size, 3).clamp_(0.0, 1.0))
            return sem
    return cfg.to_dict(), feats


def features_of(paths, feats, batch_size: int, what: str = "images") -> np.ndarray:
    out, skipped = [], []
    paths = list(paths)
    t0, done = time.perf_counter(), 0
    with torch.inference_mode():
        for _idx, batch in iter_batches(ImageSource(paths), batch_size, skipped, None):
            out.append(feats(batch).float().numpy())
            done += len(batch)
            print(f"\r{what}: {done}/{len(paths)} ({done / (time.perf_counter() - t0):.1f} images/s)",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if skipped:
        raise SystemExit(f"unreadable images would misalign the labels: {[str(s.path) for s in skipped][:5]}")
    return np.concatenate(out)


def ceilings(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    mu = train.mean(0)
    lw = LedoitWolf().fit(train - mu)
    d = test - mu
    maha = np.einsum("ij,jk,ik->i", d, lw.precision_, d)
    # nearest training image (euclidean, standardised features), in chunks
    # (a broadcast difference of 256 x 762 x ~3000 float64 would take 4.7 GB a chunk: use the
    # expansion |b - a|^2 = |b|^2 + |a|^2 - 2 b.a, one matrix product)
    sd = train.std(0) + 1e-6
    a, b = train / sd, test / sd
    d2 = (b * b).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2.0 * b @ a.T
    nn = np.sqrt(np.maximum(d2.min(1), 0.0))
    return {"mahalanobis": maha, "nearest_neighbour": nn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--features", required=True, choices=["differnet", "sanf"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = load_bench_dataset(args.dataset, seed=0)
    settings, feats = extractor(args.features, dict(kv.split("=", 1) for kv in args.set))
    t0 = time.perf_counter()
    train = features_of(data.train, feats, args.batch_size, "training images")
    test = features_of([s.path for s in data.test], feats, args.batch_size, "test images")
    seconds = time.perf_counter() - t0
    labels = np.array([s.label for s in data.test])
    result = {"machine": machine(), "command": " ".join(sys.argv), "dataset": str(args.dataset),
              "features": args.features, "settings": settings, "dim": int(train.shape[1]),
              "n_train": len(train), "n_test": len(test), "extract_seconds": round(seconds, 1),
              "image_auroc": {k: image_auroc(labels, v) for k, v in ceilings(train, test).items()}}
    print(json.dumps({k: result[k] for k in ("features", "dim", "n_train", "n_test", "extract_seconds", "image_auroc")}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
