"""The slow work behind the window, as plain functions that run on a worker thread.

Nothing here imports Qt: each function takes plain arguments (and, for long work, the
``progress``, ``cancel`` and ``emit`` of a :class:`~core.engine.jobs.CallableJob`) and returns
plain Python / numpy values, so it can be tested and reused without a window or an event loop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from core.data.images import ImageReadError, read_thumbnail
from core.data.layouts import mask_for_image
from core.data.listing import list_folder as core_list_folder
from core.io.export import (
    FLAGGED_NAME,
    HEATMAP_DIR,
    RESULTS_NAME,
    SCALE_NAME,
    SKIPPED_NAME,
    export_scan,
    heatmap_names,
    write_flagged,
    write_heatmaps,
)
from core.results import ScanResult, ScanRow

THUMB_SIZE = 128  # long side of a gallery thumbnail, pixels
THUMB_CHUNK = 16  # thumbnails decoded between two cancel checks


@dataclass
class FolderInfo:
    folder: Path
    paths: list[Path]
    recursive: bool
    #: What the listing left out and why ("left out 83 mask files, ..."), else "".
    left_out: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float (H, W, C) in [0, 1] -> contiguous uint8 (H, W) for grey or (H, W, 3)."""
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)


def make_thumbnail(path: Path, size: int = THUMB_SIZE) -> np.ndarray:
    """Decode ``path`` and shrink it to ``size`` pixels on the long side (uint8)."""
    return read_thumbnail(path, size)


def thumbnail_or_reason(path: Path, size: int = THUMB_SIZE) -> tuple[Optional[np.ndarray], str]:
    """A thumbnail and "", or None and why the file could not be read."""
    try:
        return make_thumbnail(path, size), ""
    except ImageReadError as exc:
        return None, str(exc)


def decode_thumbnails(paths: list[Path], progress, cancel, emit) -> int:
    """Emit ``(index, uint8 thumbnail or None, reason)`` per path, a few decoders in parallel."""
    n = len(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) - 1))) as pool:
        for start in range(0, n, THUMB_CHUNK):
            cancel.raise_if_cancelled()
            idx = range(start, min(n, start + THUMB_CHUNK))
            for i, (thumb, reason) in zip(idx, pool.map(thumbnail_or_reason, [paths[i] for i in idx])):
                emit((i, thumb, reason))
            progress(idx[-1] + 1, n, "thumbnails")
    return n


def list_folder(folder: Path, recursive: Optional[bool], include: Sequence[str] = (),
                exclude: Sequence[str] = ()) -> FolderInfo:
    """Image files of ``folder`` through the one listing of ``core.data.listing`` (masks of a
    dataset layout, hidden files and scan outputs left out; ``include`` / ``exclude`` file-name
    patterns as on ``scan``); with ``recursive=None`` subfolders are searched when the folder
    itself holds no image (e.g. an MVTec ``test/`` folder of defect types)."""
    inc, exc = tuple(include), tuple(exclude)

    def info(rec: bool) -> FolderInfo:
        listing = core_list_folder(folder, recursive=rec, include=inc, exclude=exc)
        return FolderInfo(folder, listing.images, rec, listing.describe(), inc, exc)

    if recursive is None:
        flat = info(False)
        return flat if flat.paths else info(True)
    return info(recursive)


def split_patterns(text: str) -> tuple[str, ...]:
    """``"*.png; cam1/*"`` -> ``("*.png", "cam1/*")``: patterns separated by ``;`` or ``,``."""
    return tuple(p.strip() for p in re.split(r"[;,]", text or "") if p.strip())


# ------------------------------------------------------------------ heat-map scales
@dataclass
class HeatScale:
    """Colour scale of the heat maps: ``lo`` is transparent, ``hi`` the hottest colour and, for
    a threshold-anchored scale, ``anchor`` the map level of the decision threshold (what the
    hottest pixel of an image scoring exactly at the threshold reaches): above it, hot."""

    lo: float
    hi: float
    anchor: Optional[float] = None


HOT_SPAN = 3.0  # the anchored scale ends at this many times the anchor's height above the background


def _peak(m: np.ndarray) -> float:
    return float(np.nanmax(m))


def anchored_scale(scores: list[float], maps: list[np.ndarray], threshold: Optional[float]) -> Optional[HeatScale]:
    """The threshold-anchored scale of a batch, or None when it has no threshold to anchor at.

    The anchor is read off the batch itself, for any detector: the images' map peaks against
    their scores (made non-decreasing), interpolated at the threshold. For a detector whose
    score is its map's maximum (pixel-gaussian) that is the threshold itself; for the others it
    is the peak level an image at the threshold reaches. The scale runs from the typical
    background (median of the maps' medians) to ``HOT_SPAN`` times the anchor's height above
    it, so the anchor sits a third of the way up and anything well above it is at full heat.
    """
    if threshold is None or not maps or len(scores) != len(maps):
        return None
    s = np.asarray(scores, dtype=np.float64)
    peaks = np.array([_peak(m) for m in maps], dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(peaks)
    if ok.sum() < 2:
        return None
    order = np.argsort(s[ok], kind="stable")
    xs, ys = s[ok][order], np.maximum.accumulate(peaks[ok][order])
    anchor = float(np.interp(threshold, xs, ys))
    lo = float(np.nanmedian([np.nanmedian(m) for m in maps]))
    if not anchor > lo:
        anchor = lo + max(1e-6, abs(lo) * 1e-3)
    return HeatScale(lo, lo + HOT_SPAN * (anchor - lo), anchor)


def image_scale(m: np.ndarray) -> HeatScale:
    """A scale for one map alone: its lowest value to its 99.9th percentile."""
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        return HeatScale(0.0, 1.0)
    lo, hi = float(finite.min()), float(np.percentile(finite, 99.9))
    return HeatScale(lo, hi if hi > lo else lo + 1.0)


# ------------------------------------------------------------------ ground-truth masks
def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The border pixels of a bool mask (``width`` pixels thick, inside the region)."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def read_outline(path: Path) -> Optional[np.ndarray]:
    """The outline of the ground-truth mask of ``path`` (None: no mask, or an empty one)."""
    from core.data.layouts import DatasetError, read_mask

    mask_path = mask_for_image(path)
    if mask_path is None:
        return None
    try:
        mask = read_mask(mask_path)
    except DatasetError:
        return None
    if not mask.any():
        return None
    return mask_outline(mask, max(1, max(mask.shape) // 300))


# ------------------------------------------------------------------ exports
EXPORT_KINDS = {"flagged": "flagged list", "heatmaps": "heat maps", "results": "full results"}


def export_targets(rows: list[ScanRow], kind: str, out: Path) -> list[Path]:
    """Files an export of ``kind`` of ``rows`` into ``out`` would replace."""
    maps = [r for r in rows if r.anomaly_map is not None]
    heat = [out / HEATMAP_DIR / n for n in heatmap_names(maps)] + ([out / SCALE_NAME] if maps else [])
    names = {"flagged": [out / FLAGGED_NAME, out / "flagged.csv"],
             "heatmaps": heat,
             "results": [out / RESULTS_NAME, out / FLAGGED_NAME, out / SKIPPED_NAME, *heat]}[kind]
    return [p for p in names if p.exists()]


def write_export(kind: str, out: Path, result: ScanResult, value_range: tuple[float, float]) -> str:
    """Write ``kind`` ('flagged', 'heatmaps' or 'results') of ``result`` into ``out``; says what."""
    if kind == "flagged":
        write_flagged(out, result.rows, with_scores=True)
        return f"{len(result.flagged)} flagged paths (flagged.txt, flagged.csv)"
    if kind == "heatmaps":
        folder, n = write_heatmaps(out, result.rows, value_range=value_range)
        return f"{n} heat maps ({folder.name}/)" if n else "no heat maps (this detector makes none)"
    written = export_scan(out, result)
    return ", ".join(p.name for p in written.values())
