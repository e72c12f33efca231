"""Target FPR against the FPR seen on unseen good images, for each way of calibrating.

For a data set's defect-free images (bottle: ``train/good`` + ``test/good``; MTD: the good
images of ``split.csv``, train and test; any MVTec-layout folder, such as a no-fixture variant
of ``benchmarks/unaligned.py``, given by its path) this trains a detector (``pixel-gaussian`` by
default, ``--detector patchcore``) on N of the training goods (seeded choice, several seeds for
small N), calibrates the threshold four ways — held-out 10 % or 5-fold cross-calibration, each
with the empirical estimate or a fitted tail — and counts how many of the good images the model
never saw (the other training goods and all test goods) are flagged at each target FPR.

    python benchmarks/calibration_fpr.py --json docs/bench/calibration-fpr.json
    python benchmarks/calibration_fpr.py --detector patchcore --data bottle mtd ../data/bottle-unaligned

Images are decoded once; for ``pixel-gaussian`` resized to its working size (256 px, the
resize the detector does itself), for other detectors shrunk, aspect kept, to at most
``--max-side`` pixels (512: above every working size of theirs), so the run takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, machine  # noqa: E402
from core.data.images import ImageSource, read_image, resize  # noqa: E402
from core.detectors.registry import create_detector  # noqa: E402
from core.engine.workflows import auto_calibration, select_subset, train_detector  # noqa: E402
from core.results.threshold import calibrate  # noqa: E402

SIZE = 256
FPRS = (0.001, 0.01, 0.05, 0.1)
METHODS = (("holdout", "empirical"), ("holdout", "tail"), ("kfold", "empirical"), ("kfold", "tail"))


def goods(name: str) -> tuple[list[Path], list[Path]]:
    """(training goods, test goods) of ``name`` (bottle, mtd, or an MVTec-layout folder)."""
    if name == "bottle" or Path(name).is_dir():
        root = DATASETS / "mvtec_ad" / "bottle" if name == "bottle" else Path(name)
        return sorted((root / "train" / "good").glob("*.png")), sorted((root / "test" / "good").glob("*.png"))
    root = DATASETS / "mtd"
    train, test = [], []
    with open(root / "split.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] == "0":
                (train if row["split"] == "train" else test).append(root / row["image"])
    return train, test


def load(paths: list[Path], detector: str, max_side: int) -> list[np.ndarray]:
    if detector == "pixel-gaussian":
        return [resize(read_image(p), (SIZE, SIZE)) for p in paths]
    out = []
    for p in paths:
        img = read_image(p)
        scale = max_side / max(img.shape[:2])
        if scale < 1:
            img = resize(img, (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))))
        out.append(img)
    return out


def run(name: str, sizes: list[int], seeds: int, device: str, detector: str = "pixel-gaussian",
        sets: dict | None = None, max_side: int = 512) -> list[dict]:
    train_paths, test_paths = goods(name)
    t0 = time.perf_counter()
    train, test = load(train_paths, detector, max_side), load(test_paths, detector, max_side)
    print(f"{name}: {len(train)} training goods, {len(test)} test goods, decoded in {time.perf_counter() - t0:.0f}s",
          flush=True)
    out = []
    for n in sizes:
        n = min(n, len(train))
        for seed in range(seeds if n < len(train) else 1):
            chosen = select_subset(len(train), n, seed)
            unseen = [train[i] for i in sorted(set(range(len(train))) - set(chosen))] + test
            for scheme, estimator in METHODS:
                if estimator == "tail":
                    continue  # the tail re-uses the empirical run's scores below
                det = create_detector(detector, {**(sets or {}), "seed": str(seed)}, device)
                rep = train_detector(det, ImageSource(train), max_train=n, calibration=scheme, folds=5,
                                     estimator="empirical", self_check=False)
                scores = np.array([r.score for r in det.score(ImageSource(unseen)).values()])
                cal = rep.threshold.calibration_scores
                for est in ("empirical", "tail"):
                    for f in FPRS:
                        thr = calibrate(cal, f, est)
                        out.append({"data": Path(name).name, "detector": detector, "n_train_goods": n, "seed": seed, "scheme": scheme,
                                    "estimator": est, "n_calibration": len(cal), "target_fpr": f,
                                    "threshold": thr.value, "n_unseen_good": int(scores.size),
                                    "observed_fpr": float((scores > thr.value).mean()),
                                    "warned": bool(thr.support_warning())})
                print(f"  n={n} seed={seed} {scheme}: {len(cal)} calibration scores, {scores.size} unseen goods",
                      flush=True)
    return out


def table(rows: list[dict]) -> str:
    """Mean observed FPR over seeds per (data, n, scheme, estimator, target)."""
    keys = sorted({(r["data"], r["n_train_goods"], r["scheme"], r["estimator"]) for r in rows},
                  key=lambda k: (k[0], k[1], k[2], k[3]))
    lines = ["| data | N goods | calibration | estimate | n cal | " + " | ".join(f"FPR {f:g}" for f in FPRS) + " |",
             "|---|---|---|---|---|" + "---|" * len(FPRS)]
    for k in keys:
        sel = [r for r in rows if (r["data"], r["n_train_goods"], r["scheme"], r["estimator"]) == k]
        cells = []
        for f in FPRS:
            obs = [r["observed_fpr"] for r in sel if r["target_fpr"] == f]
            warned = any(r["warned"] for r in sel if r["target_fpr"] == f)
            cells.append(f"{np.mean(obs):.3f}{' (w)' if warned else ''}")
        ncal = sel[0]["n_calibration"]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {ncal} | " + " | ".join(cells) + " |")
        if k[2:] == METHODS[-1]:  # after the last method of a (data, N): what ``auto`` picks per target
            lines.append(f"| {k[0]} | {k[1]} | **auto** | | | " + " | ".join(
                auto_cell(rows, k[0], k[1], f) for f in FPRS) + " |")
    return "\n".join(lines)


def auto_cell(rows: list[dict], data: str, n: int, fpr: float) -> str:
    """The mean observed FPR of the (scheme, estimator) ``auto_calibration`` picks for ``n`` good
    images at target ``fpr``, and its name: the ``auto`` default costs no run of its own."""
    scheme, est = auto_calibration(n, fpr)
    obs = [r["observed_fpr"] for r in rows if (r["data"], r["n_train_goods"], r["scheme"], r["estimator"],
                                                r["target_fpr"]) == (data, n, scheme, est, fpr)]
    return f"{np.mean(obs):.3f} ({scheme}, {est})" if obs else f"- ({scheme}, {est})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["bottle", "mtd"],
                    help="bottle, mtd, or MVTec-layout folders (train/good, test/good)")
    ap.add_argument("--detector", default="pixel-gaussian")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector settings")
    ap.add_argument("--max-side", type=int, default=512, help="other detectors: decode shrunk to this side")
    ap.add_argument("--sizes", nargs="+", type=int, default=[30, 100000], help="N training goods (capped at all)")
    ap.add_argument("--seeds", type=int, default=5, help="seeded choices of the N goods (when N < all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    for d in args.data:
        if d not in ("bottle", "mtd") and not Path(d).is_dir():
            ap.error(f"--data {d}: not bottle, mtd or a folder")
    sets = dict(kv.split("=", 1) for kv in args.set)
    rows = [r for d in args.data for r in run(d, args.sizes, args.seeds, args.device, args.detector, sets,
                                              args.max_side)]
    md = table(rows)
    print(md)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv),
                                         "seconds": time.perf_counter() - t0, "rows": rows, "table": md}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
