"""Tests of core.data.layouts on tiny synthetic trees and, when present, the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.layouts import (
    Dataset,
    DatasetError,
    Sample,
    detect_layout,
    load_dataset,
    load_folder,
    load_mtd,
    load_mvtec,
    read_mask,
)

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("AI_DATASETS", REPO.parent / "shared" / "datasets"))


def write_image(path: Path, value: int = 0, shape: tuple[int, int] = (8, 8)) -> Path:
    """Write a tiny grey image (format from the suffix); works for non-ASCII paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, np.full(shape, value, dtype=np.uint8))
    assert ok
    data.tofile(path)
    return path


def assert_sorted(dataset: Dataset) -> None:
    assert dataset.train == sorted(dataset.train)
    assert [s.path for s in dataset.test] == sorted(s.path for s in dataset.test)


# --------------------------------------------------------------------------- MVTec AD


def make_mvtec(root: Path, category: str = "bottle") -> Path:
    cat = root / category
    for i in range(3):
        write_image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        write_image(cat / "test" / "good" / f"{i:03d}.png")
    for defect, n in (("crack", 2), ("scratch", 1)):
        for i in range(n):
            write_image(cat / "test" / defect / f"{i:03d}.png", 200)
            write_image(cat / "ground_truth" / defect / f"{i:03d}_mask.png", 255)
    (cat / "license.txt").write_text("x")
    return cat


def test_mvtec_category_folder(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path)
    (
        cat / "ground_truth" / "scratch" / "000_mask.png"
    ).unlink()  # a defect without mask
    data = load_mvtec(cat)
    assert (data.name, data.layout, data.category) == ("bottle", "mvtec", "bottle")
    assert len(data.train) == 3 and len(data.test) == 5
    assert sum(s.label == 0 for s in data.test) == 2
    good = [s for s in data.test if s.label == 0]
    assert all(s.mask is None and s.defect_type == "good" for s in good)
    crack = [s for s in data.test if s.defect_type == "crack"]
    assert [s.mask for s in crack] == [
        cat / "ground_truth" / "crack" / "000_mask.png",
        cat / "ground_truth" / "crack" / "001_mask.png",
    ]
    scratch = [s for s in data.test if s.defect_type == "scratch"]
    assert scratch == [Sample(cat / "test" / "scratch" / "000.png", 1, None, "scratch")]
    assert_sorted(data)
    assert detect_layout(cat) == "mvtec"
    assert load_dataset(cat) == data
    assert load_mvtec(cat, category="bottle") == data
    with pytest.raises(DatasetError, match="not 'cable'"):
        load_mvtec(cat, category="cable")


def test_mvtec_root_of_categories(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "bottle")
    make_mvtec(tmp_path, "cable")
    assert detect_layout(tmp_path) == "mvtec"
    with pytest.raises(DatasetError, match="bottle, cable"):
        load_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="available: bottle, cable"):
        load_dataset(tmp_path, category="wood")
    data = load_dataset(tmp_path, category="cable")
    assert data.category == "cable" and len(data.train) == 3 and len(data.test) == 5


# --------------------------------------------------------------------------- MTD


def make_mtd(root: Path) -> Path:
    for i in range(10):
        write_image(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.jpg", 100)
        write_image(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.png", 0)
    for category, n in (("MT_Crack", 3), ("MT_Fray", 2)):
        for i in range(n):
            write_image(root / category / "Imgs" / f"exp1_num_{i}.jpg", 120)
            write_image(root / category / "Imgs" / f"exp1_num_{i}.png", 255)
    return root


def test_mtd_random_split(tmp_path: Path) -> None:
    root = make_mtd(tmp_path / "mtd")
    data = load_mtd(root)
    assert (data.name, data.layout, data.category) == ("mtd", "mtd", None)
    assert len(data.train) == 8 and len(data.test) == 7  # 2 good + 3 crack + 2 fray
    assert all(
        p.suffix == ".jpg" and p.parent.parent.name == "MT_Free" for p in data.train
    )
    good = [s for s in data.test if s.label == 0]
    assert len(good) == 2 and not {s.path for s in good} & set(data.train)
    assert all(s.defect_type == "good" for s in good)
    defects = [s for s in data.test if s.label == 1]
    assert sorted(s.defect_type for s in defects) == ["crack"] * 3 + ["fray"] * 2
    assert all(s.mask == s.path.with_suffix(".png") for s in defects)
    assert_sorted(data)
    assert detect_layout(root) == "mtd"
    assert load_mtd(root, seed=0) == data  # deterministic
    splits = {tuple(load_mtd(root, seed=s).train) for s in range(6)}
    assert len(splits) > 1  # the seed matters


def test_mtd_split_csv(tmp_path: Path) -> None:
    root = make_mtd(tmp_path / "mtd")
    rows = ["image,split,label,category,mask"]
    rows += [
        f"MT_Free/Imgs/exp0_num_{i}.jpg,train,0,MT_Free,MT_Free/Imgs/exp0_num_{i}.png"
        for i in (3, 1, 2)
    ]
    rows += ["MT_Free/Imgs/exp0_num_0.jpg,test,0,MT_Free,MT_Free/Imgs/exp0_num_0.png"]
    rows += [
        "MT_Crack/Imgs/exp1_num_2.jpg,test,1,MT_Crack,MT_Crack/Imgs/exp1_num_2.png"
    ]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(root)
    assert data.layout == "mtd"
    assert [p.name for p in data.train] == [
        "exp0_num_1.jpg",
        "exp0_num_2.jpg",
        "exp0_num_3.jpg",
    ]
    assert data.test == [
        Sample(
            root / "MT_Crack/Imgs/exp1_num_2.jpg",
            1,
            root / "MT_Crack/Imgs/exp1_num_2.png",
            "crack",
        ),
        Sample(root / "MT_Free/Imgs/exp0_num_0.jpg", 0, None, "good"),
    ]

    (root / "split.csv").write_text(
        "\n".join([*rows, "MT_Fray/Imgs/nope.jpg,test,1,MT_Fray,"]) + "\n"
    )
    with pytest.raises(DatasetError, match=r"1 image.* not found.*nope\.jpg"):
        load_mtd(root)
    (root / "split.csv").write_text("image,split\nMT_Free/Imgs/exp0_num_0.jpg,train\n")
    with pytest.raises(DatasetError, match="columns"):
        load_mtd(root)


def test_mtd_split_csv_alone_is_detected(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "split.csv").write_text(
        "image,split,label,category,mask\nimgs/a.jpg,train,0,MT_Free,\n"
    )
    assert detect_layout(tmp_path) == "mtd"
    assert load_dataset(tmp_path).train == [tmp_path / "imgs" / "a.jpg"]


# --------------------------------------------------------------------------- plain folders


def make_folder(root: Path) -> Path:
    for name in ("a.png", "b.jpg", "c.jpeg", "d.tif", "e.webp", "sub/f.PNG"):
        write_image(root / "good" / name)
    write_image(root / "defect" / "scratch" / "d1.png", 255)
    write_image(root / "defect" / "dent" / "deep" / "d2.bmp", 255)
    write_image(root / "defect" / "d3.JPG", 255)
    write_image(root / "masks" / "d1.png", 255)
    write_image(root / "masks" / "d2_mask.tif", 255)
    (root / "good" / "notes.txt").write_text("not an image")
    write_image(root / "good" / "._a.png")  # macOS resource fork: hidden, skipped
    return root


def test_folder_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    data = load_folder(root)
    assert (data.name, data.layout, data.category) == ("parts", "folder", None)
    assert len(data.train) == 5  # round(0.8 * 6)
    good = [s for s in data.test if s.label == 0]
    assert len(good) == 1 and good[0].path not in data.train and good[0].mask is None
    defects = {s.path.name: s for s in data.test if s.label == 1}
    assert set(defects) == {"d1.png", "d2.bmp", "d3.JPG"}
    assert defects["d1.png"].mask == root / "masks" / "d1.png"
    assert defects["d2.bmp"].mask == root / "masks" / "d2_mask.tif"
    assert defects["d3.JPG"].mask is None
    assert [defects[n].defect_type for n in ("d1.png", "d2.bmp", "d3.JPG")] == [
        "scratch",
        "dent",
        "defect",
    ]
    assert_sorted(data)
    assert detect_layout(root) == "folder"
    assert load_dataset(root) == data
    assert load_folder(root, seed=0) == data
    assert len({tuple(load_folder(root, seed=s).train) for s in range(6)}) > 1
    assert len(load_folder(root, train_fraction=0.5).train) == 3


def test_folder_with_train_dir(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    write_image(tmp_path / "reference" / "r1.png")
    write_image(tmp_path / "reference" / "nested" / "r2.png")
    data = load_dataset(root, train_dir=tmp_path / "reference")
    assert [p.name for p in data.train] == [
        "r2.png",
        "r1.png",
    ]  # sorted by path: nested/ < r1
    assert sum(s.label == 0 for s in data.test) == 6 and len(data.test) == 9
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder(root, train_dir=tmp_path / "missing")


# --------------------------------------------------------------------------- errors and masks


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        detect_layout(tmp_path / "missing")
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="unrecognised"):
        detect_layout(tmp_path)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "file.png")
    with pytest.raises(DatasetError, match="not an MVTec"):
        load_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="not an MTD"):
        load_mtd(tmp_path)
    with pytest.raises(DatasetError, match="good/ or defect/"):
        load_folder(tmp_path)
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_folder(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        load_dataset(tmp_path, layout="coco")
    cat = make_mvtec(tmp_path / "mv")
    with pytest.raises(DatasetError, match="only supported for plain folders"):
        load_dataset(cat, train_dir=tmp_path)


def test_read_mask_non_ascii_and_resize(tmp_path: Path) -> None:
    image = np.zeros((6, 10), dtype=np.uint8)
    image[1:3, 2:5] = 1  # any value > 0 is anomalous
    path = tmp_path / "données" / "défaut_mask.png"
    path.parent.mkdir()
    cv2.imencode(".png", image)[1].tofile(path)
    mask = read_mask(path)
    assert mask.dtype == bool and mask.shape == (6, 10) and mask.sum() == 6
    assert read_mask(path, shape=(12, 20)).sum() == 24
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode"):
        read_mask(broken)
    with pytest.raises(DatasetError, match="cannot read"):
        read_mask(tmp_path / "missing.png")


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (DATASETS / "mvtec_ad" / "bottle").is_dir(), reason="real MVTec AD data absent"
)
def test_real_mvtec_bottle() -> None:
    root = DATASETS / "mvtec_ad"
    assert detect_layout(root) == "mvtec"
    data = load_dataset(root, category="bottle")
    assert len(data.train) == 209 and len(data.test) == 83
    assert sum(s.label == 0 for s in data.test) == 20
    defects = [s for s in data.test if s.label == 1]
    assert all(s.mask is not None and s.mask.is_file() for s in defects)
    assert {s.defect_type for s in defects} == {
        "broken_large",
        "broken_small",
        "contamination",
    }
    assert read_mask(defects[0].mask).any()


@pytest.mark.skipif(
    not (DATASETS / "mtd" / "split.csv").is_file(), reason="real MTD data absent"
)
def test_real_mtd_split() -> None:
    data = load_dataset(DATASETS / "mtd")
    assert data.layout == "mtd"
    assert len(data.train) == 762
    assert sum(s.label == 0 for s in data.test) == 190
    assert sum(s.label == 1 for s in data.test) == 392
    assert all(s.mask is not None for s in data.test if s.label == 1)
