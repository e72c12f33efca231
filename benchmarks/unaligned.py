"""Seeded "no fixture" variants of a data set: parts that are not held in a fixture.

Every train and test image is rotated about its centre by a random angle (0-360 degrees) and
shifted by up to ``--shift`` (default 10 %) of its width and height; the border that comes into
view is filled by reflection; each test image's mask is moved with it (nearest neighbour).

``--canvas whole`` (the default since 2026-12-06, fifth session) draws each image on a canvas
that holds all of it at its angle: the rotated image's bounding box plus the largest shift on
every side, so no part of the image -- and no defect -- leaves the view; the mask is moved with
the same reflection as the image, so a defect's reflected copy in the border is marked too.
``--angles right`` rounds each drawn angle to a multiple of 90 degrees (the image moved by whole
pixels, never resampled: the shift, as the manifest records it, is rounded to a pixel too) and ``--angles none`` keeps the shift alone: diagnostics of what the
arbitrary angle costs. ``--fill black`` fills that border with black instead (a part on a dark ground): a diagnostic of
what the reflected copies cost, not issue 24's variant.
``--canvas same`` is the first variant (the rows measured before that date): the image keeps its
own size, so a rotation cuts off its corners -- and on MTD's long tiles (up to 1 : 2.7) whole
defects: 79 of the 392 defective test tiles kept none of their defect in view, 127 under half
(``defects_out_of_view`` in the manifest counts them), and the mask there was moved with an
empty border, leaving reflected copies of defects unmarked. The variant is written in the MVTec AD layout (``train/good``, ``test/<type>``,
``ground_truth/<type>/<stem>_mask.png``, PNG throughout) to a folder OUTSIDE the repository, so
that ``anomaly-inspector bench OUT`` reads it like any MVTec category.

The draw of each image depends only on ``--seed`` and the image's path relative to the data set,
so a variant is the same whatever order or subset of images it is written in.

    python benchmarks/unaligned.py ../shared/datasets/mvtec_ad/bottle ../data/bottle-unaligned2
    python benchmarks/unaligned.py ../shared/datasets/mtd ../data/mtd-unaligned2
    python benchmarks/unaligned.py --canvas same ../shared/datasets/mtd ../data/mtd-unaligned   # the first variant

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


CANVASES = ("whole", "same")
#: which angles a variant draws: any (0-360, issue 24), right (the same draw rounded to a multiple
#: of 90 degrees) or none (0: the shift alone); the last two are diagnostics
ANGLES = ("any", "right", "none")


def snap(angle: float, angles: str) -> float:
    if angles == "any":
        return angle
    if angles == "right":
        return float(round(angle / 90.0) % 4 * 90)
    if angles == "none":
        return 0.0
    raise ValueError(f"angles must be one of {ANGLES}, not {angles!r}")


def canvas_size(shape: tuple[int, int], angle: float, max_shift: float, canvas: str = "whole") -> tuple[int, int]:
    """(width, height) of the moved image: its own size (``same``), or the bounding box of the
    image rotated by ``angle`` plus ``max_shift`` of its width / height on each side (``whole``),
    which holds every pixel of the image whatever the draw."""
    h, w = shape
    if canvas == "same":
        return w, h
    if canvas != "whole":
        raise ValueError(f"canvas must be one of {CANVASES}, not {canvas!r}")
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    # 1e-9: cos(90 degrees) is 6e-17, not 0, and must not add a pixel
    return (math.ceil(w * c + h * s + 2 * max_shift * w - 1e-9),
            math.ceil(w * s + h * c + 2 * max_shift * h - 1e-9))


def motion(shape: tuple[int, int], angle: float, sx: float, sy: float,
           size: tuple[int, int] | None = None) -> np.ndarray:
    """The 2 x 3 affine matrix: rotation by ``angle`` about the image's centre, which goes to the
    centre of the canvas ``size`` (width, height; default the image's own), then the shift."""
    h, w = shape
    cw, ch = size if size is not None else (w, h)
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    m[0, 2] += sx * w + (cw - w) / 2.0
    m[1, 2] += sy * h + (ch - h) / 2.0
    if angle % 90 == 0:  # a right angle: whole pixels, so the image is moved, not resampled
        m[:, :2] = np.round(m[:, :2])
        m[:, 2] = np.round(m[:, 2])
    return m


FILLS = ("reflect", "black")


def move_image(img: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None, fill: str = "reflect") -> np.ndarray:
    h, w = img.shape[:2]
    if fill == "black":
        return cv2.warpAffine(img, m, size or (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(img, m, size or (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def move_mask(mask: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None,
              reflect: bool = False) -> np.ndarray:
    """The mask moved like its image: with ``reflect`` the border repeats it as the image's border
    repeats the image (a reflected defect is marked); without, the border is empty."""
    h, w = mask.shape[:2]
    if reflect:
        return cv2.warpAffine(mask, m, size or (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.warpAffine(mask, m, size or (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def kept_in_view(mask: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None) -> float:
    """The fraction of the moved mask that lies inside the canvas (reflected copies not counted);
    1.0 for an empty mask. The whole moved mask is drawn on the canvas grown by a whole number of
    pixels on every side, so that both draws sample the mask at the same points."""
    h, w = mask.shape[:2]
    cw, ch = size if size is not None else (w, h)
    pad = w + h  # more than the rotated mask reaches past any canvas that holds its centre
    grown = m.copy()
    grown[:, 2] += pad
    total = int(np.count_nonzero(move_mask(mask, grown, (cw + 2 * pad, ch + 2 * pad))))
    if total == 0:
        return 1.0
    return float(np.count_nonzero(move_mask(mask, m, size))) / total


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


def make_variant(src: Path, out: Path, seed: int = 0, max_shift: float = 0.1, layout: str = "auto",
                 canvas: str = "whole", fill: str = "reflect", angles: str = "any") -> dict:
    """Write the variant of the data set at ``src`` to ``out``; returns its manifest."""
    snap(0.0, angles)  # a bad value fails before anything is written
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    if canvas not in CANVASES:
        raise ValueError(f"canvas must be one of {CANVASES}, not {canvas!r}")
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
        angle = snap(angle, angles)
        img = _read(p)
        size = canvas_size(img.shape[:2], angle, max_shift, canvas)
        m = motion(img.shape[:2], angle, sx, sy, size)
        rec = {"source": key, "angle": round(angle, 3), "shift": [round(sx, 4), round(sy, 4)]}
        stem = Path(p).stem
        if folder == "train/good" or folder == "test/good":
            target = out / folder / f"{stem}.png"
        else:
            target = out / "test" / folder / f"{stem}.png"
        if target.exists():
            raise SystemExit(f"two images map to {target}: rename one")
        _write(target, move_image(img, m, size, fill))
        if mask is not None:
            mk = read_mask(mask, img.shape[:2]).astype(np.uint8) * 255
            rec["mask_kept"] = round(kept_in_view(mk, m, size), 4)
            _write(out / "ground_truth" / folder / f"{stem}_mask.png",
                   move_mask(mk, m, size, reflect=canvas == "whole" and fill == "reflect"))
        counts[folder] = counts.get(folder, 0) + 1
        records.append(rec)

    for p in data.train:
        place(p, "train/good")
    for s in data.test:
        if s.label == 0:
            place(s.path, "test/good")
        else:
            place(s.path, s.defect_type or "defect", s.mask)
    kept = [r["mask_kept"] for r in records if "mask_kept" in r]
    manifest = {"source": str(src), "layout": data.layout, "seed": seed, "max_shift": max_shift,
                "angle_range": [0, 360], "canvas": canvas, "fill": fill, "angles": angles, "counts": counts,
                # defective test images whose defect the motion took (wholly / mostly) out of view
                "defects_out_of_view": {"none_kept": sum(k == 0 for k in kept),
                                        "under_half_kept": sum(k < 0.5 for k in kept)},
                "images": records}
    (out / "unaligned.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="an MVTec AD category or the MTD folder (with split.csv)")
    ap.add_argument("out", type=Path, help="the variant's folder (outside the repository; must not exist)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=float, default=0.1, help="largest shift, a fraction of the size (default 0.1)")
    ap.add_argument("--layout", default="auto", choices=("auto", "mvtec", "mtd", "folder"))
    ap.add_argument("--angles", default="any", choices=ANGLES,
                    help="any (default: 0-360 degrees), right (the same draw rounded to a multiple of 90: moved, "
                         "not resampled) or none (the shift alone); the last two are diagnostics")
    ap.add_argument("--fill", default="reflect", choices=FILLS,
                    help="the border that comes into view: reflect (default, issue 24) or black (a part on a dark "
                         "ground; a diagnostic of what the reflected copies cost)")
    ap.add_argument("--canvas", default="whole", choices=CANVASES,
                    help="whole (default): the canvas grows to hold the rotated, shifted image, nothing leaves "
                         "the view; same: the image keeps its size and loses its corners (the first variant)")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder")
    if not (0.0 <= args.shift < 0.5) or not math.isfinite(args.shift):
        raise SystemExit("--shift must be in [0, 0.5)")
    manifest = make_variant(args.source, args.out, args.seed, args.shift, args.layout, args.canvas, args.fill,
                            args.angles)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(manifest["counts"].items())))
    lost = manifest["defects_out_of_view"]
    if lost["under_half_kept"]:
        print(f"warning: {lost['under_half_kept']} defective test images keep under half of their defect in view "
              f"({lost['none_kept']} none of it): their label says defective where the image may not",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
