"""Dataset layouts: MVTec AD, Magnetic Tile Defects (MTD) and plain good/defect folders.

Each reader returns a :class:`Dataset` of training image paths (defect-free) and
labelled test :class:`Sample` objects; nothing is decoded here except by
:func:`read_mask`. All lists are sorted so that runs are reproducible.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Dataset",
    "DatasetError",
    "Sample",
    "detect_layout",
    "list_images",
    "load_dataset",
    "load_folder",
    "load_mtd",
    "load_mvtec",
    "mask_for_image",
    "read_mask",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
LAYOUTS: tuple[str, ...] = ("mvtec", "mtd", "folder")
MTD_SPLIT_COLUMNS: tuple[str, ...] = ("image", "split", "label", "category", "mask")
MTD_GOOD_CATEGORY = "MT_Free"

StrPath = str | PathLike[str]


class DatasetError(Exception):
    """A dataset folder is missing, unrecognised or inconsistent (one-line message)."""


@dataclass(frozen=True)
class Sample:
    """One test image: ``label`` 0 good / 1 defective; ``mask`` None means no mask file."""

    path: Path
    label: int
    mask: Path | None = None
    defect_type: str = "good"


@dataclass
class Dataset:
    """Training images (defect-free) and labelled test samples of one data set."""

    name: str
    layout: str
    category: str | None
    train: list[Path] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _is_image(path: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in extensions
    )


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (hidden files skipped, extensions case-insensitive)."""
    if not folder.is_dir():
        return []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if _is_image(p))


def _existing_dir(root: StrPath) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if not path.is_dir():
        raise DatasetError(f"dataset path is not a folder: {path}")
    return path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


def read_mask(path: StrPath, shape: tuple[int, int] | None = None) -> NDArray[np.bool_]:
    """Read a mask image as a bool array (pixel > 0).

    Resized with nearest neighbour to ``shape`` = (H, W) if given. Decodes from bytes,
    so paths with non-ASCII characters work on every platform.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read mask {path}: {exc.strerror or exc}") from exc
    mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if mask is None:
        raise DatasetError(f"cannot decode mask {path}")
    if shape is not None and mask.shape != tuple(shape):
        mask = cv2.resize(
            mask, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST
        )
    return mask > 0


# --------------------------------------------------------------------------- MVTec AD


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _mvtec_categories(root: Path) -> list[str]:
    return [p.name for p in _subdirs(root) if _is_mvtec_category(p)]


def _mvtec_mask(category_dir: Path, defect: str, image: Path) -> Path | None:
    folder = category_dir / "ground_truth" / defect
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in MASK_EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def mask_for_image(path: StrPath) -> Path | None:
    """The ground-truth mask of one image, when its folder follows a known layout: MVTec AD
    (``<category>/test/<type>/<name>`` -> ``<category>/ground_truth/<type>/<name>_mask.png``) or
    MTD (a ``.png`` of the same name beside a ``.jpg``); None otherwise. (Which files of a folder
    are masks rather than parts is decided by :func:`core.data.listing.list_folder`.)"""
    path = Path(path)
    if path.parent.parent.name == "test":
        found = _mvtec_mask(path.parent.parent.parent, path.parent.name, path)
        if found is not None:
            return found
    if path.suffix.lower() in (".jpg", ".jpeg"):
        beside = path.with_suffix(".png")
        if beside.is_file():
            return beside
    return None


def load_mvtec(root: StrPath, category: str | None = None) -> Dataset:
    """Read an MVTec AD category (Bergmann et al., CVPR 2019).

    ``root`` is a category folder (``train/good``, ``test/<type>``,
    ``ground_truth/<type>/<stem>_mask.png``) or a folder of categories, in which case
    ``category`` is required.
    """
    root = _existing_dir(root)
    if _is_mvtec_category(root):
        if category is not None and category != root.name:
            raise DatasetError(
                f"{root} is the MVTec category '{root.name}', not '{category}'"
            )
        cat_dir = root
    else:
        available = _mvtec_categories(root)
        if not available:
            raise DatasetError(
                f"not an MVTec AD folder (no <category>/train and test): {root}"
            )
        if category is None:
            raise DatasetError(
                f"MVTec AD root {root} needs a category; available: {', '.join(available)}"
            )
        if category not in available:
            raise DatasetError(
                f"no MVTec category '{category}' in {root}; available: {', '.join(available)}"
            )
        cat_dir = root / category

    train = list_images(cat_dir / "train" / "good")
    test: list[Sample] = []
    for defect_dir in _subdirs(cat_dir / "test"):
        defect = defect_dir.name
        good = defect == "good"
        for image in list_images(defect_dir):
            mask = None if good else _mvtec_mask(cat_dir, defect, image)
            test.append(Sample(image, 0 if good else 1, mask, defect))
    if not train and not test:
        raise DatasetError(f"MVTec category folder holds no images: {cat_dir}")
    test.sort(key=lambda s: s.path)
    return Dataset(
        name=cat_dir.name, layout="mvtec", category=cat_dir.name, train=train, test=test
    )


# --------------------------------------------------------------------------- MTD


def _mtd_folders(root: Path) -> list[Path]:
    return [
        p for p in _subdirs(root) if p.name.startswith("MT_") and (p / "Imgs").is_dir()
    ]


def _has_mtd_split(root: Path) -> bool:
    split_file = root / "split.csv"
    if not split_file.is_file():
        return False
    with split_file.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return all(c in (h.strip() for h in header) for c in MTD_SPLIT_COLUMNS)


def _mtd_defect_type(category: str) -> str:
    if category == MTD_GOOD_CATEGORY:
        return "good"
    return category.removeprefix("MT_").lower()


def _mtd_from_split(root: Path, split_file: Path) -> tuple[list[Path], list[Sample]]:
    train: list[Path] = []
    test: list[Sample] = []
    missing: list[str] = []
    with split_file.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if any(c not in columns for c in MTD_SPLIT_COLUMNS):
            expected, found = ", ".join(MTD_SPLIT_COLUMNS), ", ".join(columns)
            raise DatasetError(
                f"{split_file} must have the columns {expected}; found {found}"
            )
        for line, raw in enumerate(reader, start=2):
            row = {
                k.strip(): (v or "").strip() for k, v in raw.items() if k is not None
            }
            if not row["image"]:
                continue
            image = root / row["image"]
            if not image.is_file():
                missing.append(row["image"])
                continue
            split, label = row["split"].lower(), row["label"]
            if label not in ("0", "1") or split not in ("train", "test"):
                raise DatasetError(
                    f"{split_file}:{line}: bad split '{split}' or label '{label}'"
                )
            if split == "train":
                if label == "1":
                    raise DatasetError(
                        f"{split_file}:{line}: defective image in the training split"
                    )
                train.append(image)
                continue
            mask = root / row["mask"] if row["mask"] and label == "1" else None
            if mask is not None and not mask.is_file():
                mask = None
            category = row["category"] or image.parent.parent.name
            test.append(Sample(image, int(label), mask, _mtd_defect_type(category)))
    if missing:
        raise DatasetError(
            f"{split_file} lists {len(missing)} image(s) not found under {root}, e.g. {missing[0]}"
        )
    return train, test


def _mtd_images(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "Imgs").iterdir() if _is_image(p, {".jpg"}))


def _mtd_random_split(
    root: Path, seed: int, train_fraction: float = 0.8
) -> tuple[list[Path], list[Sample]]:
    folders = _mtd_folders(root)
    good_dir = root / MTD_GOOD_CATEGORY
    good = _mtd_images(good_dir) if good_dir in folders else []
    permuted = [good[i] for i in np.random.default_rng(seed).permutation(len(good))]
    n_train = round(train_fraction * len(good))
    train = sorted(permuted[:n_train])
    test = [Sample(p, 0, None, "good") for p in permuted[n_train:]]
    for folder in folders:
        if folder == good_dir:
            continue
        for image in _mtd_images(folder):
            mask = image.with_suffix(".png")
            test.append(
                Sample(
                    image,
                    1,
                    mask if mask.is_file() else None,
                    _mtd_defect_type(folder.name),
                )
            )
    return train, test


def load_mtd(root: StrPath, seed: int = 0) -> Dataset:
    """Read Magnetic Tile Defects (Huang et al. 2020).

    Images are ``MT_*/Imgs/*.jpg``, each with a same-stem ``.png`` mask beside it.
    Uses ``root/split.csv`` when present (columns ``image, split, label, category, mask``,
    paths relative to ``root``); otherwise a seeded 80/20 train/test split of
    ``MT_Free`` with every defective image in test. Good test samples get no mask.
    """
    root = _existing_dir(root)
    split_file = root / "split.csv"
    if split_file.is_file():
        train, test = _mtd_from_split(root, split_file)
    elif _mtd_folders(root):
        train, test = _mtd_random_split(root, seed)
    else:
        raise DatasetError(f"not an MTD folder (no MT_*/Imgs and no split.csv): {root}")
    if not train and not test:
        raise DatasetError(f"MTD folder holds no images: {root}")
    test.sort(key=lambda s: s.path)
    return Dataset(
        name=root.name, layout="mtd", category=None, train=sorted(train), test=test
    )


# --------------------------------------------------------------------------- plain folders


def _mask_index(mask_dir: Path) -> dict[str, Path]:
    """Mask files under ``mask_dir`` by stem (and by stem without a ``_mask`` suffix)."""
    index: dict[str, Path] = {}
    if not mask_dir.is_dir():
        return index
    masks = sorted(p for p in mask_dir.rglob("*") if _is_image(p, MASK_EXTENSIONS))
    for mask in masks:
        index.setdefault(mask.stem, mask)
    for mask in masks:
        if mask.stem.endswith("_mask"):
            index.setdefault(mask.stem.removesuffix("_mask"), mask)
    return index


def _folder_mask(mask_dir: Path, index: dict[str, Path], relative: Path) -> Path | None:
    # Prefer a mask mirroring the image's sub-folder, then any mask with the same stem.
    for stem in (relative.stem, f"{relative.stem}_mask"):
        for ext in MASK_EXTENSIONS:
            candidate = mask_dir / relative.parent / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return index.get(relative.stem)


def load_folder(
    root: StrPath,
    train_dir: StrPath | None = None,
    seed: int = 0,
    train_fraction: float = 0.8,
) -> Dataset:
    """Read a plain folder of ``good/`` and ``defect/`` images (any nesting below them).

    Without ``train_dir`` a seeded ``train_fraction`` of ``good/`` is used for training and
    the rest for testing; with ``train_dir`` (absolute, or relative to ``root``) its images are
    the training set and all of ``good/`` is tested. A defect's type is its first sub-folder
    below ``defect/`` (``"defect"`` when it lies directly in it); its mask is the same-stem
    file in ``masks/`` (png, bmp or tif, optionally suffixed ``_mask``).
    """
    root = _existing_dir(root)
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    good_dir, defect_dir, mask_dir = root / "good", root / "defect", root / "masks"
    if not good_dir.is_dir() and not defect_dir.is_dir():
        raise DatasetError(
            f"not a good/defect folder (no good/ or defect/ inside): {root}"
        )
    good = list_images(good_dir, recursive=True)
    defects = list_images(defect_dir, recursive=True)
    if not good and not defects:
        raise DatasetError(f"no images in {good_dir} or {defect_dir}")

    if train_dir is not None:
        train_path = Path(train_dir).expanduser()
        if (
            not train_path.is_absolute()
            and not train_path.is_dir()
            and (root / train_path).is_dir()
        ):
            train_path = root / train_path
        if not train_path.is_dir():
            raise DatasetError(f"training folder does not exist: {train_path}")
        train = list_images(train_path, recursive=True)
        if not train:
            raise DatasetError(f"no images in training folder {train_path}")
        good_test = good
    else:
        permuted = [good[i] for i in np.random.default_rng(seed).permutation(len(good))]
        n_train = round(train_fraction * len(good))
        train, good_test = sorted(permuted[:n_train]), sorted(permuted[n_train:])

    test = [Sample(p, 0, None, "good") for p in good_test]
    index = _mask_index(mask_dir)
    for image in defects:
        relative = image.relative_to(defect_dir)
        defect_type = relative.parts[0] if len(relative.parts) > 1 else "defect"
        test.append(
            Sample(image, 1, _folder_mask(mask_dir, index, relative), defect_type)
        )
    test.sort(key=lambda s: s.path)
    return Dataset(
        name=root.name, layout="folder", category=None, train=train, test=test
    )


# --------------------------------------------------------------------------- dispatch


def detect_layout(root: StrPath) -> str:
    """Guess the layout of ``root``: ``'mvtec'``, ``'mtd'`` or ``'folder'``."""
    root = _existing_dir(root)
    if _is_mvtec_category(root) or _mvtec_categories(root):
        return "mvtec"
    if _mtd_folders(root) or _has_mtd_split(root):
        return "mtd"
    if (root / "good").is_dir() or (root / "defect").is_dir():
        return "folder"
    raise DatasetError(
        f"unrecognised dataset layout (expected MVTec AD, MTD or good/ + defect/ folders): {root}"
    )


def load_dataset(
    root: StrPath,
    layout: str = "auto",
    category: str | None = None,
    seed: int = 0,
    train_dir: StrPath | None = None,
) -> Dataset:
    """Read ``root`` with the given ``layout`` (``'auto'`` detects it).

    ``category`` applies to MVTec AD only, ``train_dir`` to plain folders only,
    ``seed`` to random splits (MTD without ``split.csv``, plain folders).
    """
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(
            f"unknown dataset layout '{layout}'; expected auto, {', '.join(LAYOUTS)}"
        )
    if train_dir is not None and layout != "folder":
        raise DatasetError(
            f"a separate training folder is only supported for plain folders, not {layout}"
        )
    if layout == "mvtec":
        return load_mvtec(root, category)
    if layout == "mtd":
        return load_mtd(root, seed)
    return load_folder(root, train_dir=train_dir, seed=seed)
