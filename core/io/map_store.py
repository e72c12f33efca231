"""Raw anomaly maps of a streamed scan, kept on disk until the batch-wide colour scale is known.

Why a store, and not a scale fixed in advance: ``heatmaps/`` uses one colour scale for the
whole batch (:func:`core.io.colormap.robust_range`: the lowest value and the 99.9th percentile
of all pixels), and ``heatmap_scale.json`` says what it is. A scale anchored at the threshold
would be known before the scan, but the threshold is on the *image score*, which is a map's
maximum for some detectors and a mean or a likelihood for others, so it says nothing general
about map values. Instead each scored image's map (already reduced to at most
:data:`~core.results.MAP_STORE_SIZE` pixels a side, float16) is appended to one file here as
it comes, and the two numbers of the scale are accumulated on the way in, in memory that does
not grow with the number of images:

- the minimum is a running minimum;
- the percentile is read from a histogram of float16 values (65,536 possible bit patterns, one
  counter each), filled with exactly the sub-sample ``robust_range`` takes of each map. Every
  float16 value has its own bin, so the percentile is the same one ``robust_range`` computes
  on the whole batch in memory, not an approximation.

At the end :meth:`MapStore.items` gives the maps back one at a time to be colourised. The
store lives in the run's temporary folder (``.maps/``); a complete run deletes it, an
interrupted one keeps it so that a resumed scan can colour every image on one scale.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STORE_NAME = ".maps"
#: float16 bit patterns in increasing order of value, NaNs left out (they do not count).
_CODES = np.arange(65536, dtype=np.uint32).astype(np.uint16)
_VALUES = _CODES.view(np.float16).astype(np.float32)
_ORDER = np.argsort(_VALUES[~np.isnan(_VALUES)], kind="stable")
_SORTED_CODES = _CODES[~np.isnan(_VALUES)][_ORDER]
_SORTED_VALUES = _VALUES[~np.isnan(_VALUES)][_ORDER]


def _subsample(m: np.ndarray) -> np.ndarray:
    """The pixels :func:`core.io.colormap.robust_range` takes of one map."""
    return m[:: max(1, m.shape[0] // 64), :: max(1, m.shape[1] // 64)].ravel()


#: One record of the index file per map: listing index, image H and W, map h and w, byte offset,
#: and a digest of all that but the offset plus the map's bytes (checked when a resumed scan
#: takes the maps over: a record edited, swapped with another's index or pointing at damaged
#: bytes is not taken, and its image is scored again).
_RECORD = np.dtype([("index", "<i8"), ("ih", "<i4"), ("iw", "<i4"), ("mh", "<i4"), ("mw", "<i4"), ("offset", "<i8"),
                    ("digest", "<u8")])
DATA_NAME, INDEX_NAME = "maps.f16", "maps.idx"
#: The largest side a stored map may have (maps come reduced to MAP_STORE_SIZE; a record
#: claiming more is damaged).
MAX_MAP_SIDE = 4096


def _digest(index: int, ih: int, iw: int, mh: int, mw: int, data: bytes) -> int:
    h = hashlib.blake2b(struct.pack("<q4i", index, ih, iw, mh, mw), digest_size=8)
    h.update(data)
    return int.from_bytes(h.digest(), "little")


class MapStore:
    """Maps by listing index, with the batch-wide scale accumulated as they are added.

    On disk: ``maps.f16`` (the float16 maps, appended one after another) and ``maps.idx`` (one
    fixed-size record per map, appended); two files however many images, and nothing per image
    kept in memory.
    """

    def __init__(self, folder: str | os.PathLike, upper_percentile: float = 99.9) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.upper = upper_percentile
        self._hist = np.zeros(65536, dtype=np.int64)
        self._pending: list[np.ndarray] = []  # sub-samples not yet counted into the histogram
        self._pending_n = 0
        self._lo = np.inf
        self._hi_max = -np.inf
        self._count = 0
        self._data = open(self.folder / DATA_NAME, "wb")
        self._index = open(self.folder / INDEX_NAME, "wb")
        self._offset = 0

    def __len__(self) -> int:
        return self._count

    def _account(self, m16: np.ndarray) -> None:
        with np.errstate(invalid="ignore"):
            if np.isnan(m16).all():
                return
            self._lo = min(self._lo, float(np.nanmin(m16)))
            self._hi_max = max(self._hi_max, float(np.nanmax(m16)))
        sub = _subsample(m16).view(np.uint16)
        self._pending.append(sub)
        self._pending_n += sub.size
        if self._pending_n > 1 << 20:
            self._count_pending()

    def _count_pending(self) -> None:
        if self._pending:
            self._hist += np.bincount(np.concatenate(self._pending), minlength=65536)
            self._pending, self._pending_n = [], 0

    def add(self, index: int, m: np.ndarray, shape: tuple[int, int]) -> None:
        """Keep ``m`` (float16, as :func:`core.results.compact_map` gives it) for image ``index``
        of ``shape`` (H, W)."""
        m16 = np.ascontiguousarray(m, dtype=np.float16)
        buf = m16.tobytes()
        self._data.write(buf)
        dig = _digest(index, shape[0], shape[1], m16.shape[0], m16.shape[1], buf)
        rec = np.array([(index, shape[0], shape[1], m16.shape[0], m16.shape[1], self._offset, dig)], dtype=_RECORD)
        self._index.write(rec.tobytes())
        self._offset += len(buf)
        self._count += 1
        self._account(m16)

    def flush(self) -> None:
        self._data.flush()
        self._index.flush()

    def close(self) -> None:
        if not self._data.closed:
            self._data.close()
            self._index.close()

    @staticmethod
    def _records(folder: Path) -> np.ndarray:
        try:
            raw = (folder / INDEX_NAME).read_bytes()
        except OSError:
            return np.zeros(0, dtype=_RECORD)
        return np.frombuffer(raw[: len(raw) - len(raw) % _RECORD.itemsize], dtype=_RECORD)

    @staticmethod
    def _read(fh, rec) -> np.ndarray:
        fh.seek(int(rec["offset"]))
        n = int(rec["mh"]) * int(rec["mw"])
        m = np.frombuffer(fh.read(2 * n), dtype=np.float16)
        if m.size != n:
            raise OSError(f"map store truncated at image {int(rec['index'])}")
        return m.reshape(int(rec["mh"]), int(rec["mw"]))

    @classmethod
    def _checked(cls, folder: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
        """``(index, map, (H, W))`` of each record of an earlier run's store that passes its check."""
        src = Path(folder)
        recs = cls._records(src)
        if not len(recs):
            return
        try:
            fh = open(src / DATA_NAME, "rb")
        except OSError:
            return
        with fh:
            for rec in recs:
                m = cls._check(fh, rec)
                if m is not None:
                    yield int(rec["index"]), m, (int(rec["ih"]), int(rec["iw"]))

    @classmethod
    def valid(cls, folder: str | os.PathLike) -> set[int]:
        """The indices of the maps in an earlier run's store that pass their check (digest,
        sizes, finite values)."""
        return {index for index, _, _ in cls._checked(folder)}

    @classmethod
    def _check(cls, fh, rec) -> np.ndarray | None:
        """The map of ``rec`` if it passes its check, else None."""
        dims = [int(rec[k]) for k in ("ih", "iw", "mh", "mw")]
        if min(dims) < 1 or max(dims[2:]) > MAX_MAP_SIDE or int(rec["offset"]) < 0:
            return None
        try:
            m = cls._read(fh, rec)
        except (OSError, ValueError):
            return None
        if _digest(int(rec["index"]), *dims, m.tobytes()) != int(rec["digest"]) or not np.isfinite(m).all():
            return None
        return m

    def adopt(self, other: str | os.PathLike, keep: dict[int, int] | None = None) -> set[int]:
        """Take over the maps of an earlier, interrupted run's store (copied: that run stays
        whole if this one never completes) that pass their check (:meth:`valid`); a damaged,
        edited or cut-short one is left out and its image scored again. ``keep`` maps an index
        of that run to the index the map gets here (its image's place in this run's listing);
        None takes every map under its own index. Returns the indices (here) taken."""
        taken: set[int] = set()
        for old, m, shape in self._checked(other):
            new = old if keep is None else keep.get(old)
            if new is not None and new not in taken:
                self.add(new, m, shape)
                taken.add(new)
        return taken

    def scale(self) -> tuple[float, float]:
        """(lo, hi) exactly as :func:`core.io.colormap.robust_range` gives it for all the maps."""
        self._count_pending()
        if not self._count or not np.isfinite(self._lo):
            return 0.0, 1.0
        lo = float(self._lo)
        counts = self._hist[_SORTED_CODES.astype(np.int64)]
        n = int(counts.sum())
        hi = lo
        if n:
            pos = (n - 1) * self.upper / 100.0
            k = int(np.floor(pos))
            cum = np.cumsum(counts)
            vk = float(_SORTED_VALUES[int(np.searchsorted(cum, k + 1))])
            vk1 = float(_SORTED_VALUES[int(np.searchsorted(cum, min(k + 2, n)))])
            hi = float(np.float32(vk) + np.float32(pos - k) * (np.float32(vk1) - np.float32(vk)))
        if not hi > lo:
            hi = float(self._hi_max)
        if not hi > lo:
            hi = lo + 1.0
        return lo, hi

    def items(self) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
        """``(index, map float32, (H, W))`` in the order they were added (index order for a
        scan, whose rows come in listing order), one at a time."""
        self.flush()
        recs = self._records(self.folder)
        with open(self.folder / DATA_NAME, "rb") as fh:
            for rec in recs:
                yield int(rec["index"]), self._read(fh, rec).astype(np.float32), (int(rec["ih"]), int(rec["iw"]))

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
