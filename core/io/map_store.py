"""Raw anomaly maps of a streamed scan, kept on disk until the batch-wide colour scale is known.

Why a store, and not a scale fixed in advance: ``heatmaps/`` uses one colour scale for the
whole batch (:func:`core.io.colormap.robust_range`: the lowest value and the 99.9th percentile
of all pixels), and ``heatmap_scale.json`` says what it is. A scale anchored at the threshold
would be known before the scan, but the threshold is on the *image score*, which is a map's
maximum for some detectors and a mean or a likelihood for others, so it says nothing general
about map values. Instead each scored image's map (already reduced to at most
:data:`~core.results.MAP_STORE_SIZE` pixels a side, float16) goes to one small ``.npy`` file
here as it comes, and the two numbers of the scale are accumulated on the way in, in memory
that does not grow with the number of images:

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

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STORE_NAME = ".maps"
_NAME = re.compile(r"^(\d+)_(\d+)x(\d+)\.npy$")
#: float16 bit patterns in increasing order of value, NaNs left out (they do not count).
_CODES = np.arange(65536, dtype=np.uint32).astype(np.uint16)
_VALUES = _CODES.view(np.float16).astype(np.float32)
_ORDER = np.argsort(_VALUES[~np.isnan(_VALUES)], kind="stable")
_SORTED_CODES = _CODES[~np.isnan(_VALUES)][_ORDER]
_SORTED_VALUES = _VALUES[~np.isnan(_VALUES)][_ORDER]


def _subsample(m: np.ndarray) -> np.ndarray:
    """The pixels :func:`core.io.colormap.robust_range` takes of one map."""
    return m[:: max(1, m.shape[0] // 64), :: max(1, m.shape[1] // 64)].ravel()


class MapStore:
    """Maps by listing index, with the batch-wide scale accumulated as they are added."""

    def __init__(self, folder: str | os.PathLike, upper_percentile: float = 99.9) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.upper = upper_percentile
        self._hist = np.zeros(65536, dtype=np.int64)
        self._lo = np.inf
        self._hi_max = -np.inf
        self._count = 0  # the file names are read back from the folder: nothing per image in memory

    def __len__(self) -> int:
        return self._count

    def _account(self, m16: np.ndarray) -> None:
        with np.errstate(invalid="ignore"):
            if np.isnan(m16).all():
                return
            self._lo = min(self._lo, float(np.nanmin(m16)))
            self._hi_max = max(self._hi_max, float(np.nanmax(m16)))
        self._hist += np.bincount(_subsample(m16).view(np.uint16), minlength=65536)

    def add(self, index: int, m: np.ndarray, shape: tuple[int, int]) -> None:
        """Keep ``m`` (float16, as :func:`core.results.compact_map` gives it) for image ``index``
        of ``shape`` (H, W)."""
        m16 = np.ascontiguousarray(m, dtype=np.float16)
        name = f"{index:09d}_{int(shape[0])}x{int(shape[1])}.npy"
        np.save(self.folder / name, m16, allow_pickle=False)
        self._count += 1
        self._account(m16)

    def adopt(self, other: str | os.PathLike, keep: set[int] | None = None) -> int:
        """Take over the maps of an earlier, interrupted run's store, those whose index is in
        ``keep`` (all when None); returns how many. Files are hard-linked (copied where links
        are not possible), so the earlier run stays whole if this one never completes."""
        n = 0
        src = Path(other)
        if not src.is_dir():
            return 0
        for p in sorted(src.iterdir()):
            hit = _NAME.match(p.name)
            if not hit or (keep is not None and int(hit.group(1)) not in keep):
                continue
            m16 = np.load(p, allow_pickle=False)
            try:
                os.link(p, self.folder / p.name)
            except OSError:
                shutil.copyfile(p, self.folder / p.name)
            self._count += 1
            self._account(m16)
            n += 1
        return n

    def scale(self) -> tuple[float, float]:
        """(lo, hi) exactly as :func:`core.io.colormap.robust_range` gives it for all the maps."""
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
        """``(index, map float32, (H, W))`` in index order, one at a time."""
        for name in sorted(p.name for p in self.folder.iterdir() if _NAME.match(p.name)):  # zero-padded: index order
            hit = _NAME.match(name)
            assert hit is not None
            yield int(hit.group(1)), np.load(self.folder / name, allow_pickle=False).astype(np.float32), (
                int(hit.group(2)), int(hit.group(3)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
