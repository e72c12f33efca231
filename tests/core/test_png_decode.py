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


def chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def raw_png(rgb: np.ndarray, interlace: bool = False, idat: bytes | None = None) -> bytes:
    """An 8-bit RGB PNG written by hand: Adam7-interlaced on request (Pillow and OpenCV write
    none), or with the given IDAT payload (valid CRCs around damaged zlib data)."""
    import zlib

    h, w, _ = rgb.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    parts = []
    for x0, y0, dx, dy in (passes if interlace else [(0, 0, 1, 1)]):
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            parts += [b"\x00" + row.tobytes() for row in sub]  # filter type 0 on every row
    data = zlib.compress(b"".join(parts)) if idat is None else idat
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, int(interlace)])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _apng(colour: np.ndarray) -> bytes:
    bio = io.BytesIO()
    Image.fromarray(colour).save(bio, "PNG", save_all=True, default_image=True,
                                 append_images=[Image.fromarray(255 - colour), Image.fromarray(colour[::-1].copy())])
    return bio.getvalue()


def variants() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 255, (37, 53), dtype=np.uint8)
    return {
        "rgb": _png(colour),
        "rgba": _png(rng.integers(0, 255, (37, 53, 4), dtype=np.uint8)),
        "grey": _png(grey),
        "grey stored as rgb": _png(np.repeat(grey[:, :, None], 3, axis=2)),
        "interlaced": raw_png(colour, interlace=True),
        "hand-written": raw_png(colour),
        "animated": _apng(colour),
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
    assert used == (name in ("rgb", "rgba", "grey", "grey stored as rgb", "interlaced", "hand-written"))


def test_the_hand_written_interlaced_png_is_interlaced():
    data = variants()["interlaced"]
    assert data[28] == 1  # the IHDR's interlace method: Adam7


@pytest.mark.parametrize("damage", ["flipped byte", "bad Adler-32", "rows missing", "extra data"])
def test_damaged_pixel_data_inside_valid_chunks_ends_the_same_either_way(tmp_path, monkeypatch, damage):
    """The only damaged files the fast decoder sees: the chunks' CRCs are right, the zlib data not."""
    import zlib

    rgb = np.random.default_rng(3).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + r.tobytes() for r in rgb)
    z = bytearray(zlib.compress(rows))
    if damage == "flipped byte":
        z[len(z) // 2] ^= 0x5A
    elif damage == "bad Adler-32":
        z[-1] ^= 0xFF
    elif damage == "rows missing":
        z = bytearray(zlib.compress(rows[: len(rows) // 2]))
    else:
        z = bytearray(zlib.compress(rows + b"\x00" * 91))
    path = tmp_path / "x.png"
    path.write_bytes(raw_png(rgb, idat=bytes(z)))
    outcomes = []
    for decoder in ("fast", "opencv"):
        try:
            outcomes.append(read_with(path, decoder, monkeypatch)[0])
        except ImageReadError as exc:
            outcomes.append(str(exc))
    fast, plain = outcomes
    if isinstance(plain, str):
        assert fast == plain  # the same refusal, in the same words
    else:
        assert not isinstance(fast, str) and np.array_equal(fast, plain)


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

