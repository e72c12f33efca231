"""Compact storage of anomaly maps as blobs, lossless by default.

A scan keeps each map as float16, at most :data:`core.results.MAP_STORE_SIZE` pixels a side:
288 KiB raw per 384 px map. Two codecs (measured in ``benchmarks/bench_session.py``, see
docs/benchmarks.md):

* ``f16-split-zlib`` (default, lossless): the float16 values' low and high bytes are split
  into two planes (the high bytes of a smooth map repeat a lot) and deflated (zlib level 1:
  level 6 saves 7 % more for twice the time). A stored run reads back bit for bit; about half
  the raw size on real maps.
* ``u8-png`` (lossy, about 9x smaller again): the map scaled to 0..255 between its own
  minimum and maximum (kept in the blob's header) and stored as an 8-bit PNG. The error is at
  most 1/510 of the map's own range, below one step of the heat-map colormap for most maps;
  for sessions of many thousands of images where only the picture matters.

A session picks its codec when it is created (``open_session(..., map_codec=...)``).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

LOSSLESS = "f16-split-zlib"
PNG8 = "u8-png"
CODECS = (LOSSLESS, PNG8)
CODEC = LOSSLESS  # the default


def encode_map(m: np.ndarray, codec: str = CODEC, level: int = 1) -> tuple[str, int, int, bytes]:
    """(codec, height, width, blob) for a 2-D map."""
    if m.ndim != 2:
        raise ValueError(f"an anomaly map is 2-D, not {m.shape}")
    if codec == LOSSLESS:
        a = np.ascontiguousarray(m, dtype="<f2")
        split = a.view(np.uint8).reshape(-1, 2).T.copy()  # all low bytes, then all high bytes
        return codec, int(a.shape[0]), int(a.shape[1]), zlib.compress(split.tobytes(), level)
    if codec == PNG8:
        f = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        q = np.zeros(f.shape, np.uint8) if hi <= lo else np.round((f - lo) / (hi - lo) * 255.0).astype(np.uint8)
        ok, buf = cv2.imencode(".png", q)
        if not ok:  # pragma: no cover - encoding a uint8 array does not fail
            raise OSError("could not encode an anomaly map")
        return codec, int(f.shape[0]), int(f.shape[1]), struct.pack("<dd", lo, hi) + buf.tobytes()
    raise ValueError(f"unknown anomaly-map codec {codec!r} (one of {', '.join(CODECS)})")


#: The largest map side a session holds (maps are stored at most MAP_STORE_SIZE = 384 a side; a
#: blob claiming more is damaged or hostile and is refused before anything is decompressed).
MAX_SIDE = 4096


def decode_map(codec: str, height: int, width: int, blob: bytes) -> np.ndarray:
    """The float16 map of a blob written by :func:`encode_map`. A session file is untrusted
    input: the size is checked first and decompression stops at the bytes that size needs, so a
    zlib bomb or a PNG claiming a huge image costs nothing (``ValueError`` instead)."""
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(f"anomaly map of {height} x {width} pixels (at most {MAX_SIDE} a side)")
    if codec == LOSSLESS:
        want = 2 * height * width
        d = zlib.decompressobj()
        data = d.decompress(blob, want)
        if len(data) != want or d.unconsumed_tail or not d.eof:
            raise ValueError(f"anomaly map blob does not hold the {want} bytes of a {height} x {width} map")
        raw = np.frombuffer(data, dtype=np.uint8)
        pairs = raw.reshape(2, -1).T.copy()
        return pairs.view("<f2").reshape(height, width).astype(np.float16)
    if codec == PNG8:
        if len(blob) < 16 + 24 or blob[16:24] != b"\x89PNG\r\n\x1a\n" or blob[28:32] != b"IHDR":
            raise ValueError("anomaly map blob does not hold a PNG")
        lo, hi = struct.unpack("<dd", blob[:16])
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("anomaly map blob holds a scale that is not finite")
        png_w, png_h = struct.unpack(">II", blob[32:40])  # IHDR: the first chunk, read before decoding
        if (png_h, png_w) != (height, width):
            raise ValueError(f"anomaly map blob holds a {png_w} x {png_h} PNG, not {width} x {height}")
        q = cv2.imdecode(np.frombuffer(blob[16:], np.uint8), cv2.IMREAD_UNCHANGED)
        if q is None or q.shape != (height, width):
            raise ValueError(f"anomaly map blob does not hold a {height}x{width} PNG")
        return (lo + q.astype(np.float32) * ((hi - lo) / 255.0)).astype(np.float16)
    raise ValueError(f"unknown anomaly-map codec {codec!r}")
