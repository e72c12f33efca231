"""Compact, lossless storage of anomaly maps as blobs.

A scan keeps each map as float16, at most :data:`core.results.MAP_STORE_SIZE` pixels a side.
Stored raw that is 288 KiB per 384 px map; the codec here splits the float16 values into their
high and low bytes (the high bytes of a smooth map repeat a lot) and deflates them, which
keeps every bit (a stored run reads back identical) at a fraction of the size
(``benchmarks/bench_session.py`` measures raw, byte-split+zlib and 16-bit PNG).
"""

from __future__ import annotations

import zlib

import numpy as np

CODEC = "f16-split-zlib"


def encode_map(m: np.ndarray, level: int = 6) -> tuple[str, int, int, bytes]:
    """(codec, height, width, blob) for a 2-D map; stored as float16."""
    if m.ndim != 2:
        raise ValueError(f"an anomaly map is 2-D, not {m.shape}")
    a = np.ascontiguousarray(m, dtype="<f2")
    split = a.view(np.uint8).reshape(-1, 2).T.copy()  # all low bytes, then all high bytes
    return CODEC, int(a.shape[0]), int(a.shape[1]), zlib.compress(split.tobytes(), level)


def decode_map(codec: str, height: int, width: int, blob: bytes) -> np.ndarray:
    if codec != CODEC:
        raise ValueError(f"unknown anomaly-map codec {codec!r}")
    raw = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    if raw.size != 2 * height * width:
        raise ValueError(f"anomaly map blob holds {raw.size} bytes, {2 * height * width} expected")
    pairs = raw.reshape(2, -1).T.copy()
    return pairs.view("<f2").reshape(height, width).astype(np.float16)
