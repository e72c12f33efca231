"""Fast exploration of PatchCore's scoring choices on cached features (issue 24).

``bench`` re-extracts every image's features for every row; when only the bank, the stage
weighting, the distance or the image-score rule change, the features are the same. This script
extracts the raw (concatenated) patch features of a data set's training and test images once per
(backbone, image size, resize rule, augmentation), caches them, and evaluates variants of the
rest on the image AUROC. It is for finding where the quality is; the rows of docs/benchmarks.md
are still ``bench`` runs of the chosen settings (same split: bench's, the 10 % held out from the
training images are left out here too).

    python benchmarks/patchcore_explore.py ../shared/datasets/mtd --size 224 --resize square \\
        --variants "weighting=pool,bank=coreset:0.01" "weighting=concat,bank=random:0.25,score=blurred_max"

A variant is comma-separated key=value: ``weighting`` pool|concat|standardize, ``distance``
l2|cosine, ``bank`` coreset:R|random:R (R a fraction of the training patches; ``min_bank`` 2048
as the detector), ``score`` max|top_mean:T|blurred_max (``blurred_max`` blurs the patch grid
with sigma 4 working pixels / stride, an approximation of the detector's map blur).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.images import ImageSource  # noqa: E402
from core.detectors.common import gaussian_blur  # noqa: E402
from core.detectors.patchcore import PatchCoreConfig, PatchCoreDetector  # noqa: E402
from core.detectors.patchcore.anomaly_map import BankIndex, top_mean  # noqa: E402
from core.detectors.patchcore.coreset import greedy_coreset  # noqa: E402
from core.detectors.patchcore.inputs import augment_views  # noqa: E402
from core.engine.bench import load_bench_dataset  # noqa: E402
from core.engine.workflows import calibration_images  # noqa: E402
from core.metrics.auroc import image_auroc  # noqa: E402


def extract(dataset: str, size: int, resize: str, backbone: str, augment: str, cache: Path, border: str = "mean",
            resample: str = "area") -> dict:
    """{"train": [grids], "test": [grids], "labels": [...], "channels": (...)} with raw concat
    features, cached in ``cache``."""
    extra = "" if (border, resample) == ("mean", "area") else f"|{border}|{resample}"  # the older caches stay valid
    key = hashlib.sha256(f"{Path(dataset).resolve()}|{size}|{resize}|{backbone}|{augment}{extra}".encode()).hexdigest()[:16]
    path = cache / f"pc-explore-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    data = load_bench_dataset(dataset, "auto", None, 0)
    det = PatchCoreDetector(PatchCoreConfig(backbone=backbone, image_size=size, resize=resize,
                                            stage_weighting="concat", augment=augment, border=border,
                                            resample=resample), device="cpu")
    fit, _ = calibration_images(ImageSource(data.train), None, 0)
    det.model = det._build(det.config.backbone if backbone != "auto" else "efficientnet-lite0").eval()
    if resize == "native":
        det._scale = det._learn_scale(fit, 0)
    out = {"train": [], "test": [], "labels": [s.label for s in data.test], "channels": det.model.channels}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(len(fit)):
            crops = [v for c in det._crops(fit[i])[0] for v in augment_views(c, augment)]
            out["train"] += [c.feats.to(torch.float16) for c in det._features(crops, raw=True)]
        test = ImageSource([s.path for s in data.test])
        for i in range(len(test)):
            out["test"].append([c.feats.to(torch.float16) for c in det._features(det._crops(test[i])[0], raw=True)])
    print(f"extracted {len(out['train'])} training and {len(out['test'])} test grids in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    torch.save(out, path)
    return out


def weigh(f: torch.Tensor, channels: tuple, weighting: str, stats=None) -> torch.Tensor:
    if weighting == "concat":
        return f
    if weighting == "standardize":
        mean, std = stats
        scale = torch.cat([torch.full((c,), 1.0 / c ** 0.5) for c in channels])
        return (f - mean) / std * scale
    share = max(channels)  # pool: each stage pooled (repeated) to the widest stage's width
    parts, start = [], 0
    for c in channels:
        part = f[..., start:start + c]
        start += c
        shape = part.shape
        parts.append(F.adaptive_avg_pool1d(part.reshape(-1, 1, c), share).reshape(*shape[:-1], share))
    return torch.cat(parts, dim=-1)


_CORESETS: dict = {}


def run_variant(feats: dict, spec: dict, seed: int = 0, min_bank: int = 2048, max_patches: int = 0) -> dict:
    t0 = time.perf_counter()
    channels = feats["channels"]
    gen = torch.Generator().manual_seed(seed)
    train = torch.cat([g.reshape(-1, g.shape[-1]) for g in feats["train"]]).float()
    if max_patches and train.shape[0] > max_patches:
        train = train[torch.randperm(train.shape[0], generator=gen)[:max_patches]]
    weighting = spec.get("weighting", "pool")
    stats = (train.mean(0), train.std(0).clamp_min(1e-6)) if weighting == "standardize" else None
    train = weigh(train, channels, weighting, stats)
    cosine = spec.get("distance", "l2") == "cosine"
    if cosine:
        train = F.normalize(train, dim=-1)
    kind, ratio = spec.get("bank", "coreset:0.01").split(":")
    n_keep = min(train.shape[0], max(int(math.ceil(float(ratio) * train.shape[0])), min_bank))
    if kind == "coreset":
        memo_key = (weighting, cosine, n_keep, seed, train.shape)
        if memo_key not in _CORESETS:  # variants that differ only in the score rule share the bank
            _CORESETS[memo_key] = greedy_coreset(train, n_keep, 128, seed)
        sel = _CORESETS[memo_key]
    else:
        sel = torch.randperm(train.shape[0], generator=gen)[:n_keep]
    bank = train[sel].contiguous()
    del train
    index = BankIndex(bank)
    rule = spec.get("score", "max")
    scores = []
    for grids in feats["test"]:
        tile_scores = []
        for g in grids:
            h, w, d = g.shape
            q = weigh(g.float(), channels, weighting, stats).reshape(h * w, -1)
            if cosine:
                q = F.normalize(q, dim=-1)
            dist = index.search(q, 1)[0][:, 0].reshape(h, w)
            if rule == "max":
                tile_scores.append(float(dist.max()))
            elif rule.startswith("top_mean"):
                tile_scores.append(top_mean(dist, float(rule.split(":")[1])))
            elif rule == "blurred_max":
                tile_scores.append(float(gaussian_blur(dist[None], 0.5)[0].max()))
            else:
                raise ValueError(f"unknown score rule {rule}")
        scores.append(max(tile_scores))
    return {"spec": spec, "bank": int(bank.shape[0]), "image_auroc": image_auroc(feats["labels"], scores),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--resize", default="square")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--augment", default="none")
    ap.add_argument("--border", default="mean")
    ap.add_argument("--resample", default="area")
    ap.add_argument("--cache", type=Path, default=Path("/tmp"))
    ap.add_argument("--max-patches", type=int, default=0, help="bound the training patches (0: all)")
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    feats = extract(args.dataset, args.size, args.resize, args.backbone, args.augment, args.cache, args.border,
                    args.resample)
    rows = []
    for v in args.variants:
        spec = dict(kv.split("=", 1) for kv in v.split(",") if kv)
        row = run_variant(feats, spec, max_patches=args.max_patches)
        row.update({"size": args.size, "resize": args.resize, "backbone": args.backbone, "augment": args.augment,
                    "border": args.border, "resample": args.resample})
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
