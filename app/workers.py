"""The slow work behind the window, as plain functions that run on a worker thread.

Nothing here imports Qt: each function takes plain arguments (and, for long work, the
``progress``, ``cancel`` and ``emit`` of a :class:`~core.engine.jobs.CallableJob`) and returns
plain Python / numpy values, so it can be tested and reused without a window or an event loop.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from core.data.images import ImageReadError, list_images, read_thumbnail

THUMB_SIZE = 128  # long side of a gallery thumbnail, pixels
THUMB_CHUNK = 16  # thumbnails decoded between two cancel checks


@dataclass
class FolderInfo:
    folder: Path
    paths: list[Path]
    recursive: bool


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


def list_folder(folder: Path, recursive: Optional[bool]) -> FolderInfo:
    """Image files of ``folder``; with ``recursive=None`` subfolders are searched when the
    folder itself holds no image (e.g. an MVTec ``test/`` folder of defect types)."""
    if recursive is None:
        paths = list_images(folder, recursive=False)
        if paths:
            return FolderInfo(folder, paths, False)
        return FolderInfo(folder, list_images(folder, recursive=True), True)
    return FolderInfo(folder, list_images(folder, recursive=recursive), recursive)
