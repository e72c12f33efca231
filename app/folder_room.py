"""The open folder: listing it, its thumbnails, the full image on screen and the files that could
not be read. Every piece of work is a helper job of the shared :class:`~app.job_tracker.JobTracker`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.job_tracker import JobTracker
from app.workers import FolderInfo, decode_thumbnails, list_folder, read_outline, to_uint8
from core.data.images import ImageSource, read_image
from core.engine.jobs import CallableJob

LogFn = Callable[[str, str], None]


class FolderRoom(QObject):
    listed = Signal(object)  # FolderInfo: the listing is done (the controller then shows it)
    thumbnails_arrived = Signal(list)  # [(index, uint8 array | None, reason)]
    image_loaded = Signal(object, object)  # path, uint8 array
    image_failed = Signal(object, str)  # path, reason
    outline_loaded = Signal(object, object)  # path, bool outline of its ground-truth mask or None
    skipped_changed = Signal(int)  # files of the open folder that could not be read

    def __init__(self, jobs: JobTracker, log: LogFn, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.jobs, self.log = jobs, log
        self.folder: Optional[FolderInfo] = None
        self.source: Optional[ImageSource] = None
        self.skipped: dict[Path, str] = {}

    def list(self, folder: str | os.PathLike, recursive: Optional[bool] = None,
             include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """List the image files of ``folder`` off the UI thread (``include`` / ``exclude``:
        file-name patterns); ``listed`` follows."""
        path = Path(folder).expanduser()
        inc, exc = tuple(include), tuple(exclude)
        self.jobs.submit(CallableJob(lambda p, c, e: list_folder(path, recursive, inc, exc), title=f"Listing {path}"),
                         "list", self.listed.emit,
                         on_failure=lambda msg, tb: self.log("error", f"Cannot open folder: {msg}"))

    def show(self, info: FolderInfo) -> None:
        """``info`` is the open folder now: its thumbnails are decoded off the UI thread."""
        self.folder, self.source = info, ImageSource(info.paths)
        self.skipped = {}
        where = " (including subfolders)" if info.recursive else ""
        filters = "; ".join([*(f"only {p}" for p in info.include), *(f"not {p}" for p in info.exclude)])
        where += f" [{filters}]" if filters else ""
        if info.paths:
            self.log("info", f"Opened {info.folder}{where}: {len(info.paths)} images"
                             + (f"; {info.left_out}" if info.left_out else ""))
        else:
            self.log("warning", f"{info.folder} holds no image files (png, jpg, bmp, tif, webp)")

    def decode_thumbnails(self) -> None:
        info = self.folder
        if info is not None and info.paths:
            self.jobs.submit(CallableJob(lambda p, c, e, ps=list(info.paths): decode_thumbnails(ps, p, c, e),
                                         title="thumbnails"), "thumbnails", lambda _n: None,
                             on_partial=self._thumbs_decoded)

    def _thumbs_decoded(self, partials: list) -> None:
        bad = [(i, reason) for i, thumb, reason in partials if thumb is None]
        for i, reason in bad:
            self.note_skipped(self.folder.paths[i], reason)
        if bad:
            self.skipped_changed.emit(len(self.skipped))
        self.thumbnails_arrived.emit(partials)

    def note_skipped(self, path: Path, reason: str) -> None:
        if path not in self.skipped:
            self.skipped[path] = reason
            self.log("warning", f"Skipped {path}: {reason}")

    def load_image(self, path: Path, load_map: Optional[Callable[[], object]] = None,
                   on_map: Optional[Callable[[object], None]] = None) -> None:
        """Decode one image in full for the image view (only the latest request counts); with
        ``load_map``, its heat map is read in the same job and handed to ``on_map``."""
        def loaded(out) -> None:
            arr, outline, m = out
            if on_map is not None and m is not None:
                on_map(m)
            self.image_loaded.emit(path, arr)
            self.outline_loaded.emit(path, outline)

        self.jobs.submit(CallableJob(lambda p, c, e: (to_uint8(read_image(path)), read_outline(path),
                                                      load_map() if load_map is not None else None),
                                     title=f"Reading {path.name}"), "image", loaded,
                         on_failure=lambda msg, tb: self.image_failed.emit(path, msg))
