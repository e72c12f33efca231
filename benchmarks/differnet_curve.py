"""DifferNet's learning curve, image AUROC against epochs up to the paper's 192 (issue 17).

The product's own training runs (``differnet`` with ``train_copies`` = K: the frozen CNN's
features of K transformed copies of every training image computed once, the flow trained on
them for every epoch). What this script adds is a cheap evaluation along the way: the backbone
is frozen, so the features of the T test-time copies of every test image never change either.
They are computed once (at the first evaluation) and each evaluation only runs the flow on
them, instead of a ``bench --model`` per snapshot that would run the CNN over all T copies of
every test image again (about 15 minutes at T = 16 on MTD, on 2 cores).

The score is the product's (eq. 5: mean over the T copies of mean_d z_d^2 / 2, with the
detector's own deterministic test transforms); the AUROC is also reported for the first copy
alone (T = 1, the untransformed image) and for the full NLL (``score_term=nll``). At the end,
``--check`` test images are scored through ``Detector.score`` and must match the cached path
(the JSON records the largest difference), so the curve is the product's curve.

    .venv/bin/python benchmarks/differnet_curve.py ../shared/datasets/mtd --epochs 192 --copies 16 \
        --t 16 --json docs/bench/mtd-differnet-curve-192ep-cache16-t16-cpu.json

``--set`` takes further detector settings (``backbone=efficientnet-lite1``, ``lr=...``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from core.data.images import ImageSource, iter_batches  # noqa: E402
from core.detectors.common import to_tensor_batch  # noqa: E402
from core.detectors.differnet.torch_model import flow_nll, latent_nll  # noqa: E402
from core.detectors.registry import create_detector  # noqa: E402
from core.engine.bench import load_bench_dataset, stratified_subset  # noqa: E402
from core.metrics.auroc import image_auroc  # noqa: E402

DEFAULT_EVAL = "1,4,8,16,24,32,48,96,144"


def test_features(det, paths: list[Path], batch_size: int = 8) -> torch.Tensor:
    """(N, T, D) features of the detector's T test-time copies of every image, as its scoring
    builds them (``_test_transforms``, ``_apply``)."""
    cfg, model = det.config, det.model
    deg, b, c = det._test_transforms()
    t = deg.numel()
    out: list[torch.Tensor] = []
    skipped: list = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for _idx, batch in iter_batches(ImageSource(paths), batch_size, skipped, None):
            x_all = to_tensor_batch(batch, cfg.image_size, 3).clamp_(0.0, 1.0)
            for i in range(len(batch)):
                per = []
                for s in range(0, t, 32):
                    sl = slice(s, s + 32)
                    n_c = deg[sl].numel()
                    copies = det._apply(x_all[i:i + 1].expand(n_c, -1, -1, -1).to(det.device), deg[sl], b[sl], c[sl])
                    per.append(model.features(copies).cpu())
                out.append(torch.cat(per))
            done = len(out)
            print(f"\rtest features: {done}/{len(paths)} images x {t} copies "
                  f"({done / (time.perf_counter() - t0):.2f} images/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if skipped:
        raise SystemExit(f"unreadable test images would misalign the labels: {[str(s.path) for s in skipped][:5]}")
    return torch.stack(out)


def flow_scores(det, feats: torch.Tensor, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Scores of cached (N, T, D) features under the detector's current flow."""
    n, t, d = feats.shape
    flat = feats.reshape(n * t, d)
    lat, nll = [], []
    with torch.no_grad():
        for s in range(0, flat.shape[0], chunk):
            z, log_jac = det.model.flow(flat[s:s + chunk].to(det.device))
            lat.append(latent_nll(z).cpu())
            nll.append(flow_nll(z, log_jac).cpu())
    lat_t = torch.cat(lat).reshape(n, t).double()
    nll_t = torch.cat(nll).reshape(n, t).double()
    return {"latent": lat_t.mean(1).numpy(), "latent_t1": lat_t[:, 0].numpy(), "nll": nll_t.mean(1).numpy()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--epochs", type=int, default=192, help="training epochs (paper: 192)")
    ap.add_argument("--copies", type=int, default=16, help="cached transformed copies per training image (train_copies)")
    ap.add_argument("--t", type=int, default=16, help="test-time copies T (paper: 64)")
    ap.add_argument("--eval-epochs", default=DEFAULT_EVAL,
                    help=f"epochs after which to evaluate (the last epoch always is); default {DEFAULT_EVAL}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more detector settings")
    ap.add_argument("--max-train", type=int, help="a seeded subset of the training images (smoke runs)")
    ap.add_argument("--max-test", type=int, help="a stratified subset of the test images (smoke runs)")
    ap.add_argument("--check", type=int, default=8, help="test images scored through Detector.score to check the cached path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save-model", type=Path, help="save the final model here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    data = load_bench_dataset(args.dataset, seed=0)
    train = list(data.train)
    if args.max_train is not None and args.max_train < len(train):
        keep = sorted(np.random.default_rng(0).choice(len(train), args.max_train, replace=False))
        train = [train[i] for i in keep]
    test = [data.test[i] for i in stratified_subset(data.test, args.max_test, 0)]
    labels = np.array([s.label for s in test])
    paths = [s.path for s in test]

    settings = {"epochs": args.epochs, "train_copies": args.copies, "n_transforms_test": args.t, "maps": False,
                **dict(kv.split("=", 1) for kv in args.set)}
    det = create_detector("differnet", settings, device=args.device)
    evals = sorted({int(e) for e in args.eval_epochs.split(",") if e.strip()} - {args.epochs})
    cache: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []

    def evaluate(d, epoch: int, train_seconds: float) -> None:
        if "feats" not in cache:
            t0 = time.perf_counter()
            cache["feats"] = test_features(d, paths)
            cache["seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = flow_scores(d, cache["feats"])
        row = {"epoch": epoch, "train_seconds": train_seconds,  # unrounded: a tiny run trains in milliseconds
               "image_auroc": image_auroc(labels, s["latent"]),
               "image_auroc_t1": image_auroc(labels, s["latent_t1"]),
               "image_auroc_nll": image_auroc(labels, s["nll"]),
               "eval_seconds": round(time.perf_counter() - t0, 1)}
        curve.append(row)
        cache["last"] = s
        print(f"epoch {epoch:4d}: AUROC T={args.t} {row['image_auroc']:.4f}, T=1 {row['image_auroc_t1']:.4f}, "
              f"NLL {row['image_auroc_nll']:.4f} (trained {train_seconds:.0f} s)", file=sys.stderr, flush=True)

    def on_snapshot(d, label: str) -> None:
        t_in = time.perf_counter()
        evaluate(d, int(label.removesuffix("ep")), float(d.meta.get("train_seconds", 0.0)))
        cache["paused"] = cache.get("paused", 0.0) + time.perf_counter() - t_in

    det.snapshot_epochs = tuple(evals)
    det.on_snapshot = on_snapshot if evals else None
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, msg: str) -> None:  # a line every 30 s at most
        now = time.perf_counter()
        if now - last[0] >= 30.0:
            last[0] = now
            print(f"[{now - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    det.fit(ImageSource(train), progress)
    fit_wall = time.perf_counter() - t0
    # the training clock, as the snapshots' (time spent evaluating inside the fit not counted)
    evaluate(det, args.epochs, fit_wall - cache.get("paused", 0.0))

    # The cached path must be the product's scoring.
    n_check = min(args.check, len(paths))
    diff = None
    if n_check:
        res = det.score(ImageSource(paths[:n_check]))
        product = np.array([res[i].score for i in range(n_check)])
        diff = float(np.abs(product - cache["last"]["latent"][:n_check]).max())
        print(f"check: {n_check} images through Detector.score, largest difference {diff:.2e}", file=sys.stderr)
    if args.save_model:
        det.save(args.save_model)

    result = {
        "machine": machine(), "command": " ".join(sys.argv if argv is None else ["differnet_curve.py", *argv]),
        "dataset": str(args.dataset), "settings": det.config.to_dict(),
        "n_train": len(train), "n_test": len(test), "n_defective": int(labels.sum()),
        "backbone": det.meta.get("backbone"), "feature_dim": det.meta.get("feature_dim"),
        "flow_parameters": det.meta.get("flow_parameters"),
        "fit_wall_seconds": round(fit_wall, 1), "test_feature_seconds": round(cache["seconds"], 1),
        "check_images": n_check, "check_max_abs_diff": diff,
        "loss_history": det.meta.get("loss_history"), "curve": curve,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
