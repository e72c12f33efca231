"""``mutual`` one factor at a time on the paper's batch (training and test images together), with
the image features and pair distances computed once and shared by the variants (issue 25).

Each variant is a set of ``--set`` overrides of the ``mutual`` detector; the variants of one run
share one detector, whose content-keyed cache (:mod:`core.detectors.mutual.cache`) keeps what
they have in common: the backbone's maps, and the pair distances of every degree and reference
already computed. So ``--refs 8,16,32,64`` computes the 64-reference pairs once (the references
of a smaller R are a subset: rendezvous hashing) and the rows for smaller R, fewer degrees, other
image-score rules or re-scoring windows cost only their arithmetic. ``seconds`` of a row is the
time its own scoring took given what earlier rows had left in the cache; ``cumulative_seconds``
of the ascending-R rows of the first variant is what a from-scratch run at that R takes
(roughly: the backbone, plus the pairs of R, none of them cached).

Feature settings (``image_size``, ``resize``, ``backbone``, ``stage_weighting``) empty the cache:
give them with ``--base`` in a run of their own.

    .venv/bin/python benchmarks/mutual_ablation.py ../shared/datasets/mvtec_ad/bottle --refs 8,16,32 \\
        --variants "paper=;degree3=patch_sizes=3;no-rescore=rescore_windows=0" --json docs/bench/mutual-ablation-bottle.json

Reported per row: image AUROC (final score and ``raw_score``, before re-scoring), pixel AUROC,
and each grouping method's suspect group (size, recall, accuracy). Labels are used for the
report only.
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

from core.data.images import ImageSource  # noqa: E402
from core.data.layouts import Sample, read_mask  # noqa: E402
from core.detectors.registry import create_detector, make_config  # noqa: E402
from core.engine.bench import EVAL_SIZE, compare_groupings, load_bench_dataset, stratified_subset  # noqa: E402
from core.metrics import image_auroc, pixel_auroc  # noqa: E402


def parse_sets(text: str) -> dict[str, str]:
    out = {}
    for kv in filter(None, (t.strip() for t in text.split(" "))):
        k, _, v = kv.partition("=")
        out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--refs", default="32", help="comma-separated reference counts R, ascending (0 = all)")
    ap.add_argument("--variants", default="paper=", help="'name=k=v k=v;name2=...' overrides per variant")
    ap.add_argument("--base", default="", help="overrides every variant shares, 'k=v k=v'")
    ap.add_argument("--max-test", type=int, help="a stratified subset of the test split")
    ap.add_argument("--max-train", type=int, help="a seeded subset of the training images")
    ap.add_argument("--no-pixel", action="store_true", help="skip the pixel AUROC (no maps kept)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    ds = load_bench_dataset(args.dataset)
    test = [ds.test[i] for i in stratified_subset(ds.test, args.max_test, 0)]
    train = list(ds.train)
    if args.max_train is not None and args.max_train < len(train):
        keep = sorted(np.random.default_rng(0).choice(len(train), args.max_train, replace=False))
        train = [train[i] for i in keep]
    samples = [Sample(p, 0) for p in train] + test
    labels = np.array([s.label for s in samples])
    masks = None if args.no_pixel else [read_mask(s.mask, (EVAL_SIZE, EVAL_SIZE)) if s.mask else None for s in samples]
    source = ImageSource([s.path for s in samples])
    base = parse_sets(args.base)
    variants = []
    for part in filter(None, (v.strip() for v in args.variants.split(";"))):
        name, _, sets = part.partition("=")
        variants.append((name, parse_sets(sets)))
    refs = [int(r) for r in args.refs.split(",")]
    det = create_detector("mutual", {**base, "references": refs[0]}, "cpu")
    det.cache.keep_only = lambda *a, **k: None  # keep every pair for the later rows
    rows = []
    cumulative = 0.0
    print(f"{args.dataset}: {len(samples)} images ({int(labels.sum())} defective); base {base}", flush=True)
    for r in refs:
        for vi, (name, sets) in enumerate(variants):
            det.config = make_config("mutual", {**base, **sets, "references": r})  # from the defaults
            maps: dict[int, np.ndarray] = {}

            def keep(i, res, maps=maps):
                if not args.no_pixel:
                    maps[i] = cv2.resize(res.anomaly_map, (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_AREA)

            t0 = time.perf_counter()
            res = det.score(source, on_result=keep)
            sec = time.perf_counter() - t0
            if vi == 0:
                cumulative += sec
            order = sorted(res)
            scores = np.array([res[i].score for i in order])
            raw = np.array([res[i].columns["raw_score"] for i in order])
            lab = labels[order]
            row = {"variant": name, "references": r, "settings": {**base, **sets},
                   "image_auroc": image_auroc(lab, scores), "raw_image_auroc": image_auroc(lab, raw),
                   "pixel_auroc": None if args.no_pixel else pixel_auroc([masks[i] for i in order],
                                                                         [maps[i] for i in order], EVAL_SIZE, labels=lab),
                   "groupings": compare_groupings(lab, scores, 0), "seconds": round(sec, 1),
                   "cumulative_seconds": round(cumulative, 1) if vi == 0 else None,
                   "cache": dict(det.meta.get("cache", {}))}
            rows.append(row)
            g = row["groupings"]
            print(f"R={r:<4} {name:<16} image {row['image_auroc']:.4f} raw {row['raw_image_auroc']:.4f} "
                  f"pixel {row['pixel_auroc'] if row['pixel_auroc'] is None else round(row['pixel_auroc'], 4)} "
                  + " ".join(f"{m}:{g[m]['suspect']}/{g[m]['recall'] and round(g[m]['recall'], 3)}/"
                             f"{g[m]['accuracy'] and round(g[m]['accuracy'], 3)}" for m in g)
                  + f"  {sec:.0f}s" + (f" (cum {cumulative:.0f}s)" if vi == 0 else ""), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"dataset": args.dataset, "n": len(samples),
                                                       "defective": int(labels.sum()), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
