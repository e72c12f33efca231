"""One-class *semantic* anomaly test on real images: one kind of object is normal, the others
are anomalies (the setting SANF's paper measures on CIFAR-10, which cannot be fetched here).

Three kinds of real image are available offline:

- ``bottle``: MVTec AD bottle, good images (train and test), top view of a bottle;
- ``tile``:   Magnetic Tile Defects, defect-free tiles (``MT_Free``), grey close-ups;
- ``scene``:  crops of the two natural photographs bundled with scikit-learn
  (``load_sample_images``: a temple in China, a flower), 96-320 px squares at random places,
  resized to 224 px.

For each kind in turn a dataset in the MVTec AD layout is written to a temporary folder:
``train/good`` = ``--n-train`` images of the normal kind, ``test/good`` = ``--n-test`` other
images of it, ``test/<kind>`` = ``--n-test`` images of every other kind. Each detector named
on the command line is then run through :func:`core.engine.bench.run_bench` and the image
AUROC reported per normal kind, with the mean. Images are seeded choices, so a run is
repeatable.

    .venv/bin/python benchmarks/semantic_one_class.py --detector sanf --set epochs=5
    .venv/bin/python benchmarks/semantic_one_class.py --detector sanf --set backbone=dinov2-vits14-imgfocus --set epochs=5

This is a much easier task than CIFAR-10 one-class (the kinds differ in colour, texture and
scale, not only in what the object is); it checks that a detector's features carry the kind
of object at all, and it compares backbones on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, machine  # noqa: E402

KINDS = ("bottle", "tile", "scene")


def _bottle_images() -> list[Path]:
    root = DATASETS / "mvtec_ad" / "bottle"
    return sorted((root / "train" / "good").glob("*.png")) + sorted((root / "test" / "good").glob("*.png"))


def _tile_images() -> list[Path]:
    return sorted((DATASETS / "mtd" / "MT_Free" / "Imgs").glob("*.jpg"))


def _scene_crops(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # RGB uint8
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(96, min(h, w, 320) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(img[y:y + side, x:x + side], (224, 224), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return out


def _pick(paths: list[Path], n: int, rng: np.random.Generator) -> list[Path]:
    if len(paths) < n:
        raise SystemExit(f"only {len(paths)} images where {n} are needed: is {DATASETS} complete?")
    return [paths[i] for i in sorted(rng.choice(len(paths), size=n, replace=False))]


def _place(items: list, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        if isinstance(item, Path):
            (folder / f"{i:04d}{item.suffix}").symlink_to(item.resolve())
        else:
            cv2.imwrite(str(folder / f"{i:04d}.png"), item)


def build(root: Path, normal: str, n_train: int, n_test: int, seed: int) -> Path:
    """The MVTec-layout category ``root/<normal>`` for one normal kind (see the module doc)."""
    rng = np.random.default_rng(seed)
    need = n_train + n_test
    pools = {
        "bottle": _pick(_bottle_images(), need if normal == "bottle" else n_test, rng),
        "tile": _pick(_tile_images(), need if normal == "tile" else n_test, rng),
        "scene": _scene_crops(need if normal == "scene" else n_test, rng),
    }
    cat = root / normal
    _place(pools[normal][:n_train], cat / "train" / "good")
    _place(pools[normal][n_train:], cat / "test" / "good")
    for kind in KINDS:
        if kind != normal:
            _place(pools[kind][:n_test], cat / "test" / kind)
    return cat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", action="append", required=True, help="detector to run (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config field for every detector")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every run's bench result to this file")
    args = p.parse_args(argv)

    from core.engine.bench import run_bench

    overrides = dict(kv.split("=", 1) for kv in args.set)
    print(f"# {machine()}\n# data: {DATASETS}; {args.n_train} train, {args.n_test} test per kind; "
          f"settings {overrides or 'default'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="semantic-") as tmp:
        cats = {kind: build(Path(tmp), kind, args.n_train, args.n_test, args.seed) for kind in KINDS}
        for det in args.detector:
            aurocs = []
            for kind in KINDS:
                res = run_bench(cats[kind], det, layout="mvtec", device=args.device, overrides=overrides,
                                seed=args.seed)
                res["normal_kind"] = kind
                results.append(res)
                a = res["metrics"]["image_auroc"]
                aurocs.append(a)
                print(f"{det:16s} normal={kind:6s} image AUROC {a:.3f}  fit {res['timing']['fit_seconds']:.1f} s  "
                      f"{res['timing']['score_images_per_second']:.1f} img/s", flush=True)
            print(f"{det:16s} mean image AUROC {np.mean(aurocs):.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
