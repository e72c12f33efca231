import os
import sys

import numpy as np
import pytest

from core.data.images import ImageReadError, ImageSource, iter_batches, list_images, read_image, to_channels
from tests.conftest import write_png


def test_reads_8_and_16_bit_grey_rgb_rgba_consistently(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    write_png(tmp_path / "rgb.png", rgb)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 128, np.uint8)], axis=2)
    write_png(tmp_path / "rgba.png", rgba)
    grey16 = np.full((4, 6), 65535 // 2, np.uint16)
    write_png(tmp_path / "g16.tif", grey16)
    grey8 = np.full((4, 6), 51, np.uint8)
    write_png(tmp_path / "g8.bmp", grey8)
    write_png(tmp_path / "w.webp", rgb)

    a = read_image(tmp_path / "rgb.png")
    assert a.dtype == np.float32 and a.shape == (5, 7, 3)
    assert a[0, 0].tolist() == [1.0, 0.0, 0.0]  # RGB order, not BGR
    b = read_image(tmp_path / "rgba.png")
    assert b.shape == (5, 7, 3) and np.allclose(a, b)  # alpha dropped
    c = read_image(tmp_path / "g16.tif")
    assert c.shape == (4, 6, 1) and abs(float(c[0, 0, 0]) - 0.5) < 1e-4
    d = read_image(tmp_path / "g8.bmp")
    assert d.shape == (4, 6, 1) and abs(float(d[0, 0, 0]) - 0.2) < 1e-6
    e = read_image(tmp_path / "w.webp")
    assert e.shape == (5, 7, 3) and e[0, 0, 0] > 0.9


def test_bad_files_give_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image")
    good = write_png(tmp_path / "ok.png", np.full((8, 8, 3), 0.5, np.float32))
    data = good.read_bytes()
    (tmp_path / "corrupt.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(tmp_path / "corrupt.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions(tmp_path):
    p = write_png(tmp_path / "locked.png", np.zeros((4, 4, 3), np.float32))
    p.chmod(0)
    with pytest.raises(ImageReadError, match="permission"):
        read_image(p)


def test_list_images_recursive_and_errors(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    write_png(tmp_path / "sub" / "b.JPG", np.zeros((4, 4, 3), np.float32))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.JPG"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "a.png")


def test_non_ascii_path(tmp_path):
    p = write_png(tmp_path / "Prüfteil_ß.png", np.full((3, 3, 3), 0.25, np.float32))
    img = read_image(p)
    assert img.shape == (3, 3, 1)  # grey stored as RGB stays grey
    assert abs(float(img[0, 0, 0]) - 64 / 255) < 1e-6


def test_iter_batches_skips_and_keeps_going(tmp_path):
    paths = []
    for i in range(5):
        paths.append(write_png(tmp_path / f"{i}.png", np.full((4, 4, 3), i / 10, np.float32)))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    src = ImageSource([paths[0], bad, *paths[1:]])
    skipped = []
    batches = list(iter_batches(src, 2, skipped))
    assert [idx for idx, _ in batches] == [[0, 2], [3, 4], [5]]
    assert len(skipped) == 1 and skipped[0].path == bad and "decodable" in skipped[0].reason


def test_to_channels():
    rgb = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    g = to_channels(rgb, 1)
    assert g.shape == (4, 4, 1)
    assert np.allclose(to_channels(g, 3)[..., 2], g[..., 0])


def test_read_thumbnail_fast_path_and_fallbacks(tmp_path):
    from core.data.images import read_thumbnail

    rng = np.random.default_rng(0)
    big = rng.random((400, 600, 3)).astype(np.float32)
    big[:, :, 0] = 1.0  # strongly red
    write_png(tmp_path / "big.png", big)
    t = read_thumbnail(tmp_path / "big.png", 64)
    assert t.dtype == np.uint8 and t.shape == (43, 64, 3)
    assert t[..., 0].mean() > 250  # RGB order kept on the reduced-decode path
    write_png(tmp_path / "deep.tif", np.full((300, 300), 30000, np.uint16))  # 16-bit: full decode
    d = read_thumbnail(tmp_path / "deep.tif", 50)
    assert d.shape == (50, 50) and abs(int(d[0, 0]) - round(30000 / 65535 * 255)) <= 1
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_thumbnail(tmp_path / "bad.png", 32)


def test_colour_decoding_shortcut_gives_the_same_pixels(tmp_path):
    """read_image's fast path for 8- and 16-bit colour (one conversion in place, OpenCV's channel
    swap) gives exactly the values of the plain conversion; an image grey but for a few pixels
    that the colour sample misses is still colour."""
    import cv2

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    almost_grey = np.repeat(rng.integers(0, 256, (37, 53, 1), dtype=np.uint8), 3, axis=2)
    almost_grey[5, 7, 0] ^= 1  # pixel 5 * 53 + 7 = 272, not a multiple of the sample's 97
    deep = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    for name, bgr, scale in (("c.png", colour, 255.0), ("g.png", almost_grey, 255.0), ("d.png", deep, 65535.0)):
        cv2.imwrite(str(tmp_path / name), bgr)
        want = bgr[:, :, ::-1].astype(np.float32) / np.float32(scale)
        got = read_image(tmp_path / name)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), name
