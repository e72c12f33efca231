"""The plain patch-kNN baseline of issue 24, written out as the script an engineer would write.

It shares only the frozen backbone's weights and the data loading with ``patchcore``; everything
else is written here in the plainest form, so that it is an independent reference for the
default detector (the summary tables of docs/benchmarks.md put it beside every default):

- each training and test image resized to ``--size`` x ``--size`` (bilinear, antialiased),
  ImageNet-normalised; grey images repeated to 3 channels;
- the backbone's stride-8 and stride-16 stage maps (EfficientNet-Lite0: 40 and 112 channels),
  each averaged over 3 x 3 (stride 1), the deeper upsampled (bilinear) to the stride-8 grid,
  concatenated as they are (no equal-share pooling, no standardising);
- the bank: a seeded random ``--bank`` fraction (25 %) of ALL the training patches (every
  training image; none held out: this script calibrates no threshold);
- exact L2 nearest neighbour (the issue's script used faiss ``IndexFlatL2``; here chunked matrix
  products, the same distances: faiss's flat index was 7 times slower on this 2-core machine for
  a bank of 150,000 patches);
- the map: patch distances upsampled (bilinear) to the working size, blurred with sigma 4 px;
  the image score: the maximum of the blurred map. Pixel AUROC on the maps and masks at 256 px,
  as ``bench`` computes it.

    python benchmarks/plain_knn.py ../shared/datasets/mtd --json docs/bench/mtd-plain-knn-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import machine  # noqa: E402
from core.data.images import read_image, resize, to_channels  # noqa: E402
from core.detectors.backbones import BACKBONE_WEIGHTS, build_stages  # noqa: E402
from core.detectors.patchcore.anomaly_map import nearest  # noqa: E402
from core.engine.bench import load_bench_dataset  # noqa: E402
from core.io import weights as store  # noqa: E402
from core.metrics.auroc import image_auroc  # noqa: E402
from core.metrics.pixel import pixel_auroc  # noqa: E402


def backbone(kind: str, weights: Path | None):
    """The frozen stages (weights from the store unless ``weights`` names a file), mean, std."""
    if kind == "tiny-random":
        return build_stages(kind, None)
    path = weights or store.resolve(BACKBONE_WEIGHTS[kind]).path
    return build_stages(kind, path)


def patch_grid(net, mean, std, path: Path, size: int, interp: str = "antialias", pad: str = "zeros") -> torch.Tensor:
    """(h, w, C) concatenated 3 x 3-averaged stage features of one image at ``size`` px.

    ``interp``/``pad`` are the two places ``patchcore`` was found to differ (issue 24): the resize
    (``area``: OpenCV's INTER_AREA, as the detector's frames) and the 3 x 3 mean at the border
    (``none``: the padding is not counted, as the detector's ``count_include_pad=False``)."""
    if interp == "area":
        img = torch.from_numpy(to_channels(resize(read_image(path), (size, size)), 3)).permute(2, 0, 1)[None]
    else:
        img = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    maps = [F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=pad == "zeros") for m in net(x)[:2]]
    grid = maps[0].shape[-2:]
    maps = [maps[0], F.interpolate(maps[1], size=grid, mode="bilinear", align_corners=False)]
    return torch.cat(maps, dim=1)[0].permute(1, 2, 0).contiguous()


def blur(m: np.ndarray, sigma: float) -> np.ndarray:
    k = int(2 * round(4 * sigma) + 1)
    return cv2.GaussianBlur(m, (k, k), sigma, borderType=cv2.BORDER_REFLECT)


def run(dataset: str, size: int = 224, bank_ratio: float = 0.25, kind: str = "efficientnet-lite0",
        weights: Path | None = None, sigma: float = 4.0, seed: int = 0, interp: str = "antialias",
        pad: str = "zeros") -> dict:
    data = load_bench_dataset(dataset)
    net, mean, std = backbone(kind, weights)
    t0 = time.perf_counter()
    with torch.inference_mode():
        train = torch.cat([patch_grid(net, mean, std, p, size, interp, pad).flatten(0, 1) for p in data.train])
        gen = torch.Generator().manual_seed(seed)
        keep = max(1, int(round(bank_ratio * train.shape[0])))
        bank = train[torch.randperm(train.shape[0], generator=gen)[:keep]].contiguous()
        n_patches = int(train.shape[0])
        del train
        bank_sq = (bank * bank).sum(1)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores, maps, masks, labels = [], [], [], []
        for s in data.test:
            g = patch_grid(net, mean, std, s.path, size, interp, pad)
            d = nearest(g.flatten(0, 1), bank, 1, bank_sq)[0].reshape(1, 1, *g.shape[:2])
            m = F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
            m = blur(m.astype(np.float32), sigma)
            scores.append(float(m.max()))
            maps.append(m)
            labels.append(s.label)
            masks.append(None if s.mask is None else cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE))
        score_s = time.perf_counter() - t1
    return {"script": "benchmarks/plain_knn.py", "dataset": str(dataset), "machine": machine(),
            "command": " ".join(sys.argv), "config": {"size": size, "bank_ratio": bank_ratio, "backbone": kind,
                                                       "sigma": sigma, "seed": seed, "interp": interp, "pad": pad},
            "n_train": len(data.train), "n_test": len(data.test), "n_train_patches": n_patches, "bank": int(bank.shape[0]),
            "metrics": {"image_auroc": image_auroc(labels, scores),
                        "pixel_auroc": pixel_auroc(masks, maps, labels=labels)},
            "timing": {"fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1),
                       "score_images_per_second": round(len(data.test) / max(score_s, 1e-9), 2)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bank", type=float, default=0.25, help="random fraction of the training patches")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--weights", type=Path, help="the backbone's weights file (default: the weights store)")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interp", choices=("antialias", "area"), default="antialias",
                    help="the resize: torch's antialiased bilinear (the script), or OpenCV's INTER_AREA (patchcore)")
    ap.add_argument("--pad", choices=("zeros", "none"), default="zeros",
                    help="the 3 x 3 mean at the border: zero padding counted (the script) or not (patchcore)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = run(args.dataset, args.size, args.bank, args.backbone, args.weights, args.sigma, args.seed, args.interp,
              args.pad)
    m = out["metrics"]
    print(f"{out['dataset']}: image AUROC {m['image_auroc']:.4f}, pixel AUROC "
          f"{m['pixel_auroc'] if m['pixel_auroc'] is None else round(m['pixel_auroc'], 4)}; "
          f"bank {out['bank']} of {out['n_train_patches']} patches; fit {out['timing']['fit_seconds']} s, "
          f"{out['timing']['score_images_per_second']} images/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
