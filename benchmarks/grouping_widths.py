"""Why the normalized cut of one score per image isolates the most extreme image (issue 17).

The zero-shot paper splits a batch's mean noise-estimation errors with a normalized cut on "a
fully connected graph"; it gives no affinity width. This script takes the per-image scores that
``anomaly-inspector bench --batch all --scores OUT.csv`` writes and splits them with:

- ``ncut`` as the product does it (:mod:`core.grouping.ncut`: standardised scores, one width,
  the median distance to the ceil(sqrt(n))-th neighbour);
- ``ncut`` with one width of s standard deviations (s = 0.5, 1, 2, 5);
- ``ncut`` with per-image widths (Zelnik-Manor & Perona's local scaling, same neighbour);
- k-means and GMM (the paper's Table 2 alternatives).

For each split: suspect group size, anomaly recall and accuracy. It then repeats the splits on
synthetic batches shaped like anomaly scores (a Gaussian bulk of 200 good parts, an exponential
tail of 40 defects, one extreme defect), over ``--seeds`` seeds, counting in how many seeds each
method puts at least 90 % of the tail, and at most 5 % of the bulk, in the suspect group: a
width that happens to suit one real batch must also hold on batches it was not chosen on.

    .venv/bin/python benchmarks/grouping_widths.py bottle=/tmp/ldm-bottle-all.csv mtd=/tmp/ldm-mtd-all.csv \\
        --json docs/bench/ldm-grouping-widths-cpu.json

The labels are used only to report recall and accuracy, never to choose a width.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.grouping import SUSPECT, group_scores, orient  # noqa: E402
from core.grouping.ncut import cut_graph, neighbour_distances, normalized_cut  # noqa: E402

WIDTHS = (0.5, 1.0, 2.0, 5.0)


def _standardised(s: np.ndarray) -> np.ndarray:
    return ((s - s.mean()) / (s.std() or 1.0))[:, None]


def per_image_width_cut(s: np.ndarray) -> np.ndarray:
    """Normalized cut with per-image widths sigma_i (distance to the ceil(sqrt(n))-th
    neighbour), w_ij = exp(-d^2 / (2 sigma_i sigma_j)); the product's split search."""
    z = _standardised(s)
    d = np.abs(z - z.T)
    sig = neighbour_distances(d)
    sig = np.where(sig > 0, sig, np.median(sig[sig > 0]) if (sig > 0).any() else 1.0)
    return cut_graph(np.exp(-d ** 2 / (2.0 * sig[:, None] * sig[None, :])))[0]


def splits() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every split compared, as ``scores -> 0/1 labels`` (1 = suspect, the smaller group)."""
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "ncut (product: one width, neighbour median)": lambda s: group_scores(s, "ncut").labels,
    }
    for w in WIDTHS:
        out[f"ncut, one width of {w:g} std"] = (
            lambda s, w=w: orient(normalized_cut(_standardised(s), sigma=w)[0], s[:, None]))
    out["ncut, per-image widths"] = lambda s: orient(per_image_width_cut(s), s[:, None])
    out["kmeans"] = lambda s: group_scores(s, "kmeans").labels
    out["gmm"] = lambda s: group_scores(s, "gmm").labels
    return out


def evaluate(labels: np.ndarray, scores: np.ndarray) -> dict[str, dict]:
    res = {}
    for name, split in splits().items():
        sus = split(scores) == SUSPECT
        res[name] = {"suspect": int(sus.sum()), "recall": float(sus[labels == 1].mean()),
                     "accuracy": float((sus == (labels == 1)).mean())}
    return res


def synthetic(seeds: int) -> dict[str, int]:
    """Seeds (of ``seeds``) in which each split catches >= 90 % of the tail with <= 5 % of the bulk."""
    good = dict.fromkeys(splits(), 0)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = np.r_[rng.normal(0, 1, 200), 3 + rng.exponential(2.0, 40), 25.0]
        for name, split in splits().items():
            sus = split(x) == SUSPECT
            good[name] += int(sus[200:].mean() >= 0.9 and sus[:200].mean() <= 0.05)
    return good


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scores", nargs="*", metavar="NAME=SCORES.csv", help="bench --scores files")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    result: dict = {"batches": {}, "synthetic_seeds": args.seeds}
    for item in args.scores:
        name, _, path = item.partition("=")
        labels, scores = read_scores(Path(path))
        result["batches"][name] = {"n": len(scores), "defective": int(labels.sum()),
                                   "splits": evaluate(labels, scores)}
    result["synthetic_good_splits"] = synthetic(args.seeds)
    for name, b in result["batches"].items():
        print(f"== {name}: {b['n']} images, {b['defective']} defective")
        for split, r in b["splits"].items():
            print(f"  {split:45s} suspect {r['suspect']:5d}  recall {r['recall']:.3f}  accuracy {r['accuracy']:.3f}")
    print(f"== synthetic bulk + tail + outlier: seeds (of {args.seeds}) with tail caught and bulk spared")
    for split, k in result["synthetic_good_splits"].items():
        print(f"  {split:45s} {k}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
