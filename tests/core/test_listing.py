"""The one folder listing (core/data/listing.py) that the GUI and ``scan`` share."""

import os

import numpy as np
import pytest

from core.data.images import list_images
from core.data.listing import RUN_MARKER, list_folder
from tests.conftest import write_png

IMG = np.full((8, 8, 3), 0.5, np.float32)


def names(paths, root):
    return sorted(p.relative_to(root).as_posix() for p in paths)


def test_mvtec_ground_truth_and_mtd_masks_are_not_parts(tmp_path):
    write_png(tmp_path / "test" / "broken" / "000.png", IMG)
    write_png(tmp_path / "ground_truth" / "broken" / "000_mask.png", IMG)
    write_png(tmp_path / "MT_Free" / "Imgs" / "exp1.jpg", IMG)
    write_png(tmp_path / "MT_Free" / "Imgs" / "exp1.png", IMG)  # MTD mask of exp1.jpg
    write_png(tmp_path / "MT_Free" / "Imgs" / "alone.png", IMG)  # no .jpg beside it: a part
    got = list_folder(tmp_path)
    assert names(got.images, tmp_path) == ["MT_Free/Imgs/alone.png", "MT_Free/Imgs/exp1.jpg", "test/broken/000.png"]
    assert names(got.masks, tmp_path) == ["MT_Free/Imgs/exp1.png", "ground_truth/broken/000_mask.png"]
    # the older entry point follows the same rule (training on an MTD good folder)
    assert names(list_images(tmp_path / "MT_Free" / "Imgs"), tmp_path) == ["MT_Free/Imgs/alone.png", "MT_Free/Imgs/exp1.jpg"]


def test_include_exclude_patterns(tmp_path):
    for n in ("a/x1.png", "a/x2.jpg", "b/y1.png"):
        write_png(tmp_path / n, IMG)
    assert names(list_folder(tmp_path, include=["*.png"]).images, tmp_path) == ["a/x1.png", "b/y1.png"]
    got = list_folder(tmp_path, exclude=["b/*"])
    assert names(got.images, tmp_path) == ["a/x1.png", "a/x2.jpg"] and names(got.excluded, tmp_path) == ["b/y1.png"]
    assert names(list_folder(tmp_path, include=["a/*"], exclude=["*.jpg"]).images, tmp_path) == ["a/x1.png"]


def test_output_folders_are_never_listed(tmp_path):
    write_png(tmp_path / "p.png", IMG)
    write_png(tmp_path / "old-results" / "heatmaps" / "p.png", IMG)
    (tmp_path / "old-results" / RUN_MARKER).write_text("")
    write_png(tmp_path / "out" / "q.png", IMG)
    got = list_folder(tmp_path, skip=[tmp_path / "out"])
    assert names(got.images, tmp_path) == ["p.png"]
    assert names(got.outputs, tmp_path) == ["old-results", "out"]


@pytest.mark.skipif(os.name != "posix", reason="symbolic links and permissions as on POSIX")
def test_finding9_broken_links_loops_and_unreadable_folders_are_reported(tmp_path):
    write_png(tmp_path / "ok.png", IMG)
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder loop
    locked = tmp_path / "locked"
    locked.mkdir()
    write_png(locked / "hidden.png", IMG)
    os.mkfifo(tmp_path / "pipe.png")
    locked.chmod(0)
    try:
        got = list_folder(tmp_path)
    finally:
        locked.chmod(0o755)
    assert names(got.images, tmp_path) == ["ok.png"] or os.geteuid() == 0
    reasons = {p.relative_to(tmp_path).as_posix(): r for p, r in ((s.path, s.reason) for s in got.problems)}
    assert "broken" in reasons["gone.png"]
    assert "loop" in reasons["self.png"]
    assert "loop" in reasons["sub/up"]
    assert "regular file" in reasons["pipe.png"]
    if os.geteuid() != 0:  # root reads any folder
        assert "cannot be read" in reasons["locked"]


def test_not_recursive_and_wrong_paths(tmp_path):
    write_png(tmp_path / "a.png", IMG)
    write_png(tmp_path / "sub" / "b.png", IMG)
    assert names(list_folder(tmp_path, recursive=False).images, tmp_path) == ["a.png"]
    with pytest.raises(FileNotFoundError):
        list_folder(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        list_folder(tmp_path / "a.png")


def test_issue27_finding6_a_png_beside_a_jpg_is_a_part_unless_it_is_a_mask(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.random((12, 10, 3)).astype(np.float32)
    write_png(tmp_path / "plain" / "x.jpg", photo)
    write_png(tmp_path / "plain" / "x.png", photo)  # the same photo twice: both are parts
    mask = np.zeros((12, 10), np.uint8)
    mask[3:6, 2:5] = 255
    write_png(tmp_path / "plain" / "y.jpg", photo)
    write_png(tmp_path / "plain" / "y.png", mask)  # a binary mask of y.jpg's size
    write_png(tmp_path / "plain" / "z.jpg", photo)
    write_png(tmp_path / "plain" / "z.png", mask[:8])  # binary, but not of z.jpg's size: a part
    soft = (rng.random((12, 10)) * 40).astype(np.uint8)  # MTD's masks are not strictly binary
    write_png(tmp_path / "MT_Crack" / "Imgs" / "t.jpg", photo)
    write_png(tmp_path / "MT_Crack" / "Imgs" / "t.png", soft)
    got = list_folder(tmp_path)
    assert names(got.images, tmp_path) == ["MT_Crack/Imgs/t.jpg", "plain/x.jpg", "plain/x.png", "plain/y.jpg",
                                           "plain/z.jpg", "plain/z.png"]
    left = {s.path.relative_to(tmp_path).as_posix(): s.reason for s in got.masks_skipped()}
    assert left == {"MT_Crack/Imgs/t.png": "the mask of t.jpg beside it, not a part",
                    "plain/y.png": "the mask of y.jpg beside it, not a part"}
