"""Seeded "no fixture" variants of a data set: parts that are not held in a fixture.

Every train and test image is rotated about its centre by a random angle (0-360 degrees) and
shifted by up to ``--shift`` (default 10 %) of its width and height; the border that comes into
view is filled by reflection; each test image's mask is moved with it (nearest neighbour, the
border empty). The variant is written in the MVTec AD layout (``train/good``, ``test/<type>``,
``ground_truth/<type>/<stem>_mask.png``, PNG throughout) to a folder OUTSIDE the repository, so
that ``anomaly-inspector bench OUT`` reads it like any MVTec category.

The draw of each image depends only on ``--seed`` and the image's path relative to the data set,
so a variant is the same whatever order or subset of images it is written in.

    python benchmarks/unaligned.py ../shared/datasets/mvtec_ad/bottle ../data/bottle-unaligned
    python benchmarks/unaligned.py ../shared/datasets/mtd ../data/mtd-unaligned

(issue 24, part 2; the MTD variant takes its train/test split from ``split.csv``.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.layouts import load_dataset, read_mask  # noqa: E402


def draw(seed: int, key: str, max_shift: float) -> tuple[float, float, float]:
    """(angle in degrees, shift x, shift y as fractions of the size) for one image, from a
    generator seeded by ``seed`` and the image's key (its path relative to the data set)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    angle = float(rng.uniform(0.0, 360.0))
    sx, sy = (float(v) for v in rng.uniform(-max_shift, max_shift, size=2))
    return angle, sx, sy


def motion(shape: tuple[int, int], angle: float, sx: float, sy: float) -> np.ndarray:
    """The 2 x 3 affine matrix: rotation by ``angle`` about the centre, then the shift."""
    h, w = shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    m[0, 2] += sx * w
    m[1, 2] += sy * h
    return m


def move_image(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def move_mask(mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = mask.shape[:2]
    return cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _read(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SystemExit(f"cannot decode {path}")
    return img


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise SystemExit(f"cannot encode {path}")
    buf.tofile(path)


def make_variant(src: Path, out: Path, seed: int = 0, max_shift: float = 0.1, layout: str = "auto") -> dict:
    """Write the variant of the data set at ``src`` to ``out``; returns its manifest."""
    src = Path(src)
    out = Path(out)
    if out.resolve() == REPO or REPO in out.resolve().parents:
        raise SystemExit(f"{out} is inside the repository: write variants outside it")
    data = load_dataset(src, layout=layout)
    base = src.resolve()
    counts: dict[str, int] = {}
    records = []

    def key_of(p: Path) -> str:
        return Path(p).resolve().relative_to(base).as_posix()

    def place(p: Path, folder: str, mask: Path | None = None) -> None:
        key = key_of(p)
        angle, sx, sy = draw(seed, key, max_shift)
        img = _read(p)
        m = motion(img.shape[:2], angle, sx, sy)
        stem = Path(p).stem
        if folder == "train/good" or folder == "test/good":
            target = out / folder / f"{stem}.png"
        else:
            target = out / "test" / folder / f"{stem}.png"
        if target.exists():
            raise SystemExit(f"two images map to {target}: rename one")
        _write(target, move_image(img, m))
        if mask is not None:
            mk = read_mask(mask, img.shape[:2]).astype(np.uint8) * 255
            _write(out / "ground_truth" / folder / f"{stem}_mask.png", move_mask(mk, m))
        counts[folder] = counts.get(folder, 0) + 1
        records.append({"source": key, "angle": round(angle, 3), "shift": [round(sx, 4), round(sy, 4)]})

    for p in data.train:
        place(p, "train/good")
    for s in data.test:
        if s.label == 0:
            place(s.path, "test/good")
        else:
            place(s.path, s.defect_type or "defect", s.mask)
    manifest = {"source": str(src), "layout": data.layout, "seed": seed, "max_shift": max_shift,
                "angle_range": [0, 360], "counts": counts, "images": records}
    (out / "unaligned.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="an MVTec AD category or the MTD folder (with split.csv)")
    ap.add_argument("out", type=Path, help="the variant's folder (outside the repository; must not exist)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=float, default=0.1, help="largest shift, a fraction of the size (default 0.1)")
    ap.add_argument("--layout", default="auto", choices=("auto", "mvtec", "mtd", "folder"))
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder")
    if not (0.0 <= args.shift < 0.5) or not math.isfinite(args.shift):
        raise SystemExit("--shift must be in [0, 0.5)")
    manifest = make_variant(args.source, args.out, args.seed, args.shift, args.layout)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(manifest["counts"].items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
