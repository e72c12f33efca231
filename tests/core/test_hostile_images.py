"""Issue 15, findings 2, 3 and 10 (EXIF): hostile image files give a skip reason, never an
exception other than ImageReadError, and never a silently damaged image."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data import images
from core.data.images import ImageReadError, read_image, read_thumbnail

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_file_reads_or_gives_a_reason(name):
    try:
        img = read_image(CORPUS / name)
    except ImageReadError as exc:
        assert str(exc) and "Error" not in str(exc)
        return
    assert img.dtype == np.float32 and img.ndim == 3 and np.isfinite(img).all()


def test_finding2_huge_header_is_too_large_not_an_opencv_error():
    with pytest.raises(ImageReadError, match="too large"):
        read_image(CORPUS / "huge_header.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(CORPUS / "black_20000.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_thumbnail(CORPUS / "huge_header.png", 64)


def test_finding2_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    cv2.imwrite(str(p), np.zeros((300, 400), np.uint8))
    assert read_image(p).shape == (300, 400, 1)
    monkeypatch.setenv("ANOMALY_INSPECTOR_MAX_PIXELS", "100000")
    with pytest.raises(ImageReadError, match=r"too large \(400 x 300"):
        read_image(p)


def test_finding2_oversized_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    p = tmp_path / "big.jpg"
    arr = np.zeros((400, 800, 3), np.uint8)
    arr[:, 400:] = 255
    cv2.imwrite(str(p), arr)
    monkeypatch.setattr(images, "FULL_DECODE_PIXELS", 400 * 800 // 4)
    img = read_image(p)
    assert img.shape[:2] == (200, 400)
    assert img[:, :190].max() < 0.1 and img[:, 210:].min() > 0.9


def test_finding3_png_with_missing_rows_is_truncated():
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(CORPUS / "missing_rows.png")


def test_finding3_cut_jpeg_is_truncated():
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(CORPUS / "truncated.jpg")


def test_finding3_decoder_exceptions_become_skips(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), np.zeros((4, 4), np.uint8))

    def boom(*a, **k):
        raise cv2.error("internal codec failure")

    monkeypatch.setattr(images.cv2, "imdecode", boom)
    # the fast PNG decoder (where installed) failing too: it hands the file to OpenCV, which fails
    monkeypatch.setattr(images, "_FAST_PNG", [boom])
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_named_like_an_image_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match="regular file"):
        read_image(tmp_path / "pipe.png")


def test_finding10_exif_rotation_is_applied_everywhere():
    """Scoring, the GUI's full view and its thumbnail all show the camera's upright picture."""
    img = read_image(CORPUS / "exif_rotate6.jpg")
    assert img.shape[:2] == (48, 24)  # raw 48 wide x 24 high, rotated 90 degrees clockwise
    # raw: left half white; after a clockwise turn the white half is on top
    assert img[:20].mean() > 0.9 and img[28:].mean() < 0.1
    thumb = read_thumbnail(CORPUS / "exif_rotate6.jpg", 24)
    assert thumb.shape[:2] == (24, 12)
    assert thumb[:10].mean() > 230 and thumb[14:].mean() < 25


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_thumbnail_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageReadError, match="regular file"):
        read_thumbnail(tmp_path / "pipe.jpg", 32)
