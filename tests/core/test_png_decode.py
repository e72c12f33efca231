"""PNGs through imagecodecs (the optional ``fast-png`` extra) give the pixels OpenCV gives, and a
damaged PNG is refused as before (issue 28: decoding was the largest cost of a bottle scan)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from core.data import images
from core.data.images import ImageReadError, read_image

imagecodecs = pytest.importorskip("imagecodecs", reason="the fast-png extra (imagecodecs) is not installed")


def _png(arr: np.ndarray, **pil) -> bytes:
    if pil:
        bio = io.BytesIO()
        Image.fromarray(arr).save(bio, "PNG", **pil)
        return bio.getvalue()
    return cv2.imencode(".png", arr)[1].tobytes()


def variants() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 255, (37, 53), dtype=np.uint8)
    return {
        "rgb": _png(colour),
        "rgba": _png(rng.integers(0, 255, (37, 53, 4), dtype=np.uint8)),
        "grey": _png(grey),
        "grey stored as rgb": _png(np.repeat(grey[:, :, None], 3, axis=2)),
        "interlaced": _png(colour[:, :, ::-1], interlace=1),
        "16-bit": _png(rng.integers(0, 65535, (37, 53, 3), dtype=np.uint16)),
        "grey + alpha": _la(grey),
        "palette": _palette(colour),
        "tRNS": _png(grey, transparency=5),
    }


def _la(grey: np.ndarray) -> bytes:
    bio = io.BytesIO()
    Image.fromarray(np.dstack([grey, 255 - grey]), "LA").save(bio, "PNG")
    return bio.getvalue()


def _palette(colour: np.ndarray) -> bytes:
    bio = io.BytesIO()
    Image.fromarray(colour).convert("P").save(bio, "PNG")
    return bio.getvalue()


def read_with(path, decoder: str, monkeypatch) -> tuple[np.ndarray, bool]:
    calls = []
    fast = (lambda data: calls.append(1) or imagecodecs.png_decode(data)) if decoder == "fast" else None
    monkeypatch.setattr(images, "_FAST_PNG", [fast])
    return read_image(path), bool(calls)


@pytest.mark.parametrize("name", list(variants()))
def test_the_fast_decoder_and_opencv_give_the_same_pixels(tmp_path, monkeypatch, name):
    path = tmp_path / "x.png"
    path.write_bytes(variants()[name])
    fast, used = read_with(path, "fast", monkeypatch)
    plain, _ = read_with(path, "opencv", monkeypatch)
    assert fast.dtype == plain.dtype and np.array_equal(fast, plain)
    # the fast decoder takes the 8-bit grey, RGB and RGBA files; the others are OpenCV's
    assert used == (name in ("rgb", "rgba", "grey", "grey stored as rgb", "interlaced"))


@pytest.mark.parametrize("damage", ["pixel byte", "truncated", "no IEND"])
def test_a_damaged_png_is_refused_with_the_fast_decoder_as_without(tmp_path, monkeypatch, damage):
    data = bytearray(_png(np.random.default_rng(1).integers(0, 255, (120, 90, 3), dtype=np.uint8)))
    if damage == "pixel byte":  # a decoder that skips CRCs (libspng) would decode it without a word
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:-12]
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    if damage == "no IEND":  # the pixels are whole: OpenCV decides as before; the fast one is not asked
        called = []
        monkeypatch.setattr(images, "_FAST_PNG", [lambda data: called.append(1)])
        read_image_or_error(path)
        assert not called
        return
    # a decoder that would take it: the check before it must keep it away
    monkeypatch.setattr(images, "_FAST_PNG", [lambda data: np.zeros((120, 90, 3), np.uint8)])
    with pytest.raises(ImageReadError, match="corrupt image data"):
        read_image(path)


def read_image_or_error(path):
    try:
        return read_image(path)
    except ImageReadError:
        return None


def test_the_environment_variable_turns_the_fast_decoder_off(monkeypatch):
    monkeypatch.setattr(images, "_FAST_PNG", [])
    monkeypatch.setenv(images.PNG_ENV, "opencv")
    assert images._fast_png() is None
    monkeypatch.setattr(images, "_FAST_PNG", [])
    monkeypatch.delenv(images.PNG_ENV)
    assert images._fast_png() is imagecodecs.png_decode

