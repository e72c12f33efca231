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


def decode_map(codec: str, height: int, width: int, blob: bytes) -> np.ndarray:
    """The float16 map of a blob written by :func:`encode_map`."""
    if codec == LOSSLESS:
        raw = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
        if raw.size != 2 * height * width:
            raise ValueError(f"anomaly map blob holds {raw.size} bytes, {2 * height * width} expected")
        pairs = raw.reshape(2, -1).T.copy()
        return pairs.view("<f2").reshape(height, width).astype(np.float16)
    if codec == PNG8:
        lo, hi = struct.unpack("<dd", blob[:16])
        q = cv2.imdecode(np.frombuffer(blob[16:], np.uint8), cv2.IMREAD_UNCHANGED)
        if q is None or q.shape != (height, width):
            raise ValueError(f"anomaly map blob does not hold a {height}x{width} PNG")
        return (lo + q.astype(np.float32) * ((hi - lo) / 255.0)).astype(np.float16)
    raise ValueError(f"unknown anomaly-map codec {codec!r}")
