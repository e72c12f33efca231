"""Pack the shared evaluation data into a small copy for a GPU machine.

The device tool carries at most 64 MiB of the working tree and not ``../shared``; the raw data
is about 210 MB (MVTec bottle: 900x900 PNGs; MTD: 952 all-black masks of good tiles beside the
images). This writes, under OUT (default ``.data/``, git-ignored):

- ``OUT/mvtec_ad/bottle``: the MVTec AD layout, every image shrunk so its side is at most
  ``--bottle-side`` (default 448, the largest input any detector uses: DifferNet's first
  scale) and stored as JPEG at ``--quality`` (default 95); masks as PNG, nearest-neighbour.
- ``OUT/mtd``: the images listed in ``split.csv`` (JPEG bytes copied unchanged when the image
  is already within ``--mtd-side``, else shrunk), the masks of the defective ones, and
  ``split.csv`` itself with the good tiles' mask column emptied (those masks are all black).

``anomaly-inspector bench OUT/mvtec_ad/bottle ...`` and ``bench OUT/mtd ...`` then run as on
the originals. The JPEG step changes pixels slightly, so a row measured on the packed copy
says so in docs/benchmarks.md.

    .venv/bin/python benchmarks/pack_datasets.py            # -> .data/, prints the size
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, REPO  # noqa: E402


def _shrink(img: np.ndarray, side: int, interpolation: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    s = side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interpolation)


def _read(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    return img


def _write(path: Path, img: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, img, params)
    if not ok:
        raise SystemExit(f"cannot encode {path}")
    data.tofile(path)


def _mask(src: Path, dst: Path, side: int) -> None:
    m = _read(src)
    if m.ndim == 3:
        m = m[..., 0]
    _write(dst, _shrink(m, side, cv2.INTER_NEAREST), 0)


def pack_mvtec_category(src: Path, dst: Path, side: int, quality: int) -> int:
    """MVTec AD category ``src`` -> ``dst``: images as JPEG within ``side``, masks as PNG."""
    n = 0
    for img_path in sorted(list(src.glob("train/*/*.png")) + list(src.glob("test/*/*.png"))):
        rel = img_path.relative_to(src).with_suffix(".jpg")
        _write(dst / rel, _shrink(_read(img_path), side, cv2.INTER_AREA), quality)
        n += 1
    for mask_path in sorted(src.glob("ground_truth/*/*.png")):
        _mask(mask_path, dst / mask_path.relative_to(src), side)
    for extra in ("license.txt", "readme.txt"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    return n


def pack_mtd(src: Path, dst: Path, side: int, quality: int) -> int:
    """MTD with ``split.csv`` -> ``dst``: only the listed images, only the defective masks."""
    rows = list(csv.DictReader((src / "split.csv").open(newline="", encoding="utf-8")))
    if not rows:
        raise SystemExit(f"{src / 'split.csv'} lists no images")
    fields = list(rows[0])
    for row in rows:
        img_path = src / row["image"]
        out = dst / row["image"]
        img = _read(img_path)
        if max(img.shape[:2]) <= side:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img_path, out)
        else:
            _write(out, _shrink(img, side, cv2.INTER_AREA), quality)
        if row["label"] == "1" and row.get("mask"):
            _mask(src / row["mask"], dst / row["mask"], side)
        else:
            row["mask"] = ""
    dst.mkdir(parents=True, exist_ok=True)
    with (dst / "split.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=str(REPO / ".data"), help="output folder (default .data/)")
    p.add_argument("--bottle-side", type=int, default=448)
    p.add_argument("--mtd-side", type=int, default=448)
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: remove it or choose another folder")
    n_bottle = pack_mvtec_category(DATASETS / "mvtec_ad" / "bottle", out / "mvtec_ad" / "bottle", args.bottle_side,
                                   args.quality)
    n_mtd = pack_mtd(DATASETS / "mtd", out / "mtd", args.mtd_side, args.quality)
    print(f"bottle: {n_bottle} images, {_size_mb(out / 'mvtec_ad'):.1f} MiB; "
          f"mtd: {n_mtd} images, {_size_mb(out / 'mtd'):.1f} MiB; total {_size_mb(out):.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
