"""Writes the committed corpus of tiny hostile files in tests/data/hostile/ (run once; the
files are committed, this script documents how each was made). ``python tests/data/make_hostile.py``"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent / "hostile"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(w: int, h: int, raw: bytes, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def main() -> None:
    HERE.mkdir(exist_ok=True)
    # finding 2: a 66-byte PNG whose header claims 60000 x 60000 pixels
    (HERE / "huge_header.png").write_bytes(png(60000, 60000, b"\x00"))
    # finding 2: the header of a 20000 x 20000 grey PNG with one row of data (the real all-black
    # one is 1.2 MB; the pixel limit must refuse it from the header, before any decoding)
    (HERE / "black_20000.png").write_bytes(png(20000, 20000, b"\x00" * 20001))
    # finding 3: a PNG whose image data holds only half of its rows
    w = h = 16
    half = b"".join(b"\x00" + bytes([200] * w) for _ in range(h // 2))
    (HERE / "missing_rows.png").write_bytes(png(w, h, half))
    # finding 3: a JPEG cut in the middle of its scan data
    rng = np.random.default_rng(0)
    noisy = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    full = jpeg(noisy)
    (HERE / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    # finding 10: a 48 x 24 (w x h) JPEG whose EXIF says "rotate 90 degrees clockwise to view"
    grad = np.zeros((24, 48, 3), np.uint8)
    grad[:, :24] = 255  # left half white in the raw orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    (HERE / "exif_rotate6.jpg").write_bytes(jpeg(grad, exif=exif.tobytes()))
    # not an image at all, and a header with nothing after it
    (HERE / "text.png").write_bytes(b"this is not an image\n")
    (HERE / "signature_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (HERE / "soi_only.jpg").write_bytes(b"\xff\xd8\xff\xe0")


if __name__ == "__main__":
    main()
