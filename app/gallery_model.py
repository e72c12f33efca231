"""The gallery's list model: one entry per image of the open folder, with its thumbnail, tile
label, score, flag, group and the inspector's verdict, sorted and filtered with numpy (no widget
per image). Thumbnails arrive as uint8 arrays decoded off the UI thread and become ``QImage`` here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QImage

from core.results import ScanRow
from core.results.threshold import Threshold

PathRole = Qt.UserRole + 1
ScoreRole = Qt.UserRole + 2
FlaggedRole = Qt.UserRole + 3
ThumbRole = Qt.UserRole + 4
ErrorRole = Qt.UserRole + 5
NameRole = Qt.UserRole + 6
VerdictRole = Qt.UserRole + 7
LabelRole = Qt.UserRole + 8  # the name as a tile shows it (see label_names)
DisagreeRole = Qt.UserRole + 9  # the verdict contradicts the flag: the ≠ mark (from the controller's counts)
NormalRole = Qt.UserRole + 10  # marked "this one is normal" (in the session's good set)

def qimage_from_array(arr: np.ndarray) -> QImage:
    """uint8 (H, W) grey or (H, W, 3) RGB -> a QImage that owns its pixels."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    fmt = QImage.Format_Grayscale8 if arr.ndim == 2 else QImage.Format_RGB888
    return QImage(arr.data, w, h, arr.strides[0], fmt).copy()


def _relative_names(paths: list[Path], root: Optional[Path]) -> list[str]:
    """Names relative to ``root`` by plain string work (pathlib is slow for thousands of files)."""
    prefix = os.path.join(str(root), "") if root is not None else None
    out = []
    for p in paths:
        s = str(p)
        out.append(s[len(prefix):].replace(os.sep, "/") if prefix and s.startswith(prefix) else os.path.basename(s))
    return out


def label_names(names: list[str]) -> list[str]:
    """Tile labels for relative names: a folder that every image has at the same depth tells no
    image apart, so it becomes ``…`` (MTD's ``MT_Blowhole/Imgs/exp1.jpg`` shows as
    ``MT_Blowhole/…/exp1.jpg``, keeping the defect folder that the middle-elision would cut).
    Only where every name has that many folders; the full name stays in the tooltip."""
    parts = [n.split("/") for n in names]
    if not parts:
        return []
    depth = min(len(p) for p in parts) - 1  # folder levels every name has
    constant = [d for d in range(depth) if len({p[d] for p in parts}) == 1]
    if not constant:
        return list(names)
    out = []
    for p in parts:
        shown: list[str] = []
        for d, part in enumerate(p):
            if d in constant:  # d < depth: always a folder, never the file
                if not shown or shown[-1] != "…":
                    shown.append("…")
            else:
                shown.append(part)
        out.append("/".join(shown))
    return out


@dataclass
class _Entry:
    path: Path
    name: str
    label: str = ""
    thumb: Optional[QImage] = None
    error: str = ""
    score: Optional[float] = None
    flagged: Optional[bool] = None
    group: Optional[str] = None

class GalleryModel(QAbstractListModel):
    """One entry per image of the open folder, shown sorted (folder order or score) and
    filtered (all or flagged). Order and filter are computed with numpy, so re-sorting
    thousands of images as scores arrive costs milliseconds, not a Python call per comparison."""

    view_reset = Signal()  # the visible set changed size: the selection must be restored
    thumbs_progressed = Signal(int, int)  # thumbnails arrived, images

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._entries: list[_Entry] = []
        self.thumbs_done = 0
        self._index_of: dict[str, int] = {}  # str(path) -> entry index (folder order)
        self._scores = np.zeros(0)  # NaN where not scored
        self._flags = np.zeros(0, bool)
        self._groups = np.zeros(0, np.int8)  # 0 normal, 1 suspect, -1 not grouped
        self._view = np.zeros(0, np.int64)  # entry index of each visible row
        self._row = np.zeros(0, np.int64)  # visible row of each entry, -1 when filtered out
        self.by_score = False
        self.flagged_only = False
        self.group_filter: Optional[int] = None  # None: every group; 0 normal; 1 suspect
        self.score_range: tuple[float, float] = (0.0, 1.0)
        self.detector_name = ""
        self.threshold: Optional[Threshold] = None
        self.stale = ""  # "" or e.g. "previous run (ocsvm)": scores and flags are drawn greyed
        self.verdicts: dict[str, str] = {}  # str(path) -> "ok" | "ng" | "unsure"
        self.review_only: Optional[np.ndarray] = None  # the "to review" walk: these entries, in this order
        self.disagreeing: frozenset[str] = frozenset()  # str(path) of the ≠ marks (ReviewCounts.disagreeing)
        self.normal: frozenset[str] = frozenset()  # str(path) of the images marked "this one is normal"

    # -- Qt model interface
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 - Qt signature
        return 0 if parent.isValid() else len(self._view)

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self._view):
            return None
        e = self._entries[int(self._view[index.row()])]
        if role in (Qt.DisplayRole, NameRole):
            return e.name
        if role == LabelRole:
            return e.label or e.name
        if role == PathRole:
            return e.path
        if role == ScoreRole:
            return e.score
        if role == FlaggedRole:
            return e.flagged
        if role == ThumbRole:
            return e.thumb
        if role == ErrorRole:
            return e.error
        if role == VerdictRole:
            return self.verdicts.get(str(e.path))
        if role == DisagreeRole:
            return str(e.path) in self.disagreeing
        if role == NormalRole:
            return str(e.path) in self.normal
        if role == Qt.ToolTipRole:
            return self._tooltip(e)
        return None

    def _tooltip(self, e: _Entry) -> str:
        lines = [str(e.path)]
        if e.error:
            lines.append(f"could not be read: {e.error}")
        if e.score is not None:
            state = "FLAGGED" if e.flagged else "not flagged" if e.flagged is not None else "no threshold"
            lines.append(f"score {e.score:.6g} ({state}) by {self.detector_name or 'detector'}"
                         + (f", {self.stale}" if self.stale else ""))
            v = self.verdicts.get(str(e.path))
            if v is not None:
                lines.append(f"inspector's verdict: {v.upper()}" + (" — disagrees with the detector"
                                                                    if str(e.path) in self.disagreeing else ""))
            if str(e.path) in self.normal:
                lines.append("marked normal: in the session's good set, its score takes part in the calibration")
            if e.group:
                lines.append(f"{e.group} group (zero-shot grouping; flagged = suspect)")
            else:
                lines.append(self.threshold.describe() if self.threshold else "no threshold set")
        return "\n".join(lines)

    # -- filling
    def set_paths(self, paths: list[Path], root: Optional[Path] = None) -> None:
        """Entries for ``paths``; names are relative to ``root`` (subfolders keep files apart)."""
        self.beginResetModel()
        paths = [p if isinstance(p, Path) else Path(p) for p in paths]
        names = _relative_names(paths, root)
        self._entries = [_Entry(p, n, lab) for p, n, lab in zip(paths, names, label_names(names))]
        self._index_of = {str(p): i for i, p in enumerate(paths)}
        self.thumbs_done = 0  # entries whose thumbnail (or reason it failed) has arrived
        self._scores = np.full(len(paths), np.nan)
        self._flags = np.zeros(len(paths), bool)
        self._groups = np.full(len(paths), -1, np.int8)
        self.score_range = (0.0, 1.0)
        self._set_view(self._compute_view())
        self.endResetModel()

    def path_at(self, row: int) -> Path:
        """Path of the visible ``row``."""
        return self._entries[int(self._view[row])].path

    def row_of(self, path: Path) -> Optional[int]:
        """Visible row of ``path`` (None when unknown or filtered out)."""
        i = self._index_of.get(str(path))
        return None if i is None or self._row[i] < 0 else int(self._row[i])

    def set_thumbnails(self, items: list) -> None:
        """``[(entry index, uint8 array | None, reason)]`` from the thumbnail job."""
        changed = []
        for i, arr, reason in items:
            if 0 <= i < len(self._entries):
                e = self._entries[i]
                if e.thumb is None and not e.error:
                    self.thumbs_done += 1
                e.thumb = qimage_from_array(arr) if arr is not None else None
                e.error = reason
                changed.append(i)
        self._changed(changed, [ThumbRole, ErrorRole, Qt.ToolTipRole])
        self.thumbs_progressed.emit(self.thumbs_done, len(self._entries))

    def clear_scores(self) -> None:
        for e in self._entries:
            e.score = e.flagged = e.group = None
        self._scores[:] = np.nan
        self._flags[:] = False
        self._groups[:] = -1
        self.score_range = (0.0, 1.0)
        self._reorder()
        self._changed(range(len(self._entries)), [ScoreRole, FlaggedRole, Qt.ToolTipRole])

    def set_rows(self, rows: list[ScanRow]) -> None:
        """Scores and flags of (some) scan rows; other entries keep theirs."""
        changed = []
        for r in rows:
            i = self._index_of.get(str(r.path))
            if i is not None:
                e = self._entries[i]
                e.score, e.flagged = float(r.score), r.flagged
                e.group = r.columns.get("group")
                self._scores[i], self._flags[i] = e.score, bool(r.flagged)
                self._groups[i] = {"normal": 0, "suspect": 1}.get(e.group, -1)
                changed.append(i)
        finite = self._scores[np.isfinite(self._scores)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            self.score_range = (lo, hi if hi > lo else lo + 1.0)
        self._reorder()
        self._changed(changed, [ScoreRole, FlaggedRole, Qt.ToolTipRole])

    def counts(self) -> tuple[int, int, int, int]:
        """(images, scored, flagged, visible)."""
        return len(self._entries), int(np.isfinite(self._scores).sum()), int(self._flags.sum()), len(self._view)

    # -- order and filter
    def set_order(self, by_score: Optional[bool] = None, flagged_only: Optional[bool] = None) -> None:
        if by_score is not None:
            self.by_score = bool(by_score)
        if flagged_only is not None:
            self.flagged_only = bool(flagged_only)
        self._reorder()

    def set_group_filter(self, group: Optional[int]) -> None:
        """Show only the normal (0) or the suspect (1) group of a grouped scan; None: all."""
        self.group_filter = group
        self._reorder()

    def set_disagreeing(self, disagreeing: frozenset[str]) -> None:
        """The ≠ marks: ``str(path)`` of the verdicts that contradict the flag, as counted once for the
        whole window (:func:`core.results.review.review_counts`)."""
        if disagreeing != self.disagreeing:
            self.disagreeing = frozenset(disagreeing)
            self._changed(range(len(self._entries)), [DisagreeRole, Qt.ToolTipRole])

    def set_normal(self, normal: frozenset[str]) -> None:
        """The images marked "this one is normal" (``str(path)``): their tiles carry the mark."""
        if normal != self.normal:
            self.normal = frozenset(normal)
            self._changed(range(len(self._entries)), [NormalRole, Qt.ToolTipRole])

    def set_verdicts(self, verdicts: dict[str, str]) -> None:
        self.verdicts = dict(verdicts)
        self._changed(range(len(self._entries)), [VerdictRole, Qt.ToolTipRole])

    def set_review_only(self, paths: Optional[list[Path]]) -> None:
        """Show only ``paths``, in their order (the "to review" queue, highest score first); None
        shows every image again, in the chosen sort."""
        if paths is None:
            self.review_only = None
        else:
            index = [self._index_of.get(str(p)) for p in paths]
            self.review_only = np.array([i for i in index if i is not None], np.int64)
        self._reorder()

    def has_groups(self) -> bool:
        return bool((self._groups >= 0).any())

    def _compute_view(self) -> np.ndarray:
        keep = self._flags.copy() if self.flagged_only else np.ones(len(self._entries), bool)
        if self.group_filter is not None:
            keep &= self._groups == self.group_filter
        if self.review_only is not None:
            return self.review_only[keep[self.review_only]]
        idx = np.flatnonzero(keep)
        if self.by_score:  # highest first, unscored last, ties in folder order
            key = -self._scores[idx]
            key[np.isnan(key)] = np.inf
            idx = idx[np.argsort(key, kind="stable")]
        return idx.astype(np.int64)

    def _set_view(self, view: np.ndarray) -> None:
        self._view = view
        self._row = np.full(len(self._entries), -1, np.int64)
        self._row[view] = np.arange(len(view))

    def _reorder(self) -> None:
        view = self._compute_view()
        if np.array_equal(view, self._view):
            return
        if len(view) != len(self._view):
            self.beginResetModel()
            self._set_view(view)
            self.endResetModel()
            self.view_reset.emit()
            return
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        entries = [int(self._view[ix.row()]) for ix in old]
        self._set_view(view)
        self.changePersistentIndexList(old, [self.index(int(self._row[e])) if self._row[e] >= 0 else QModelIndex()
                                             for e in entries])
        self.layoutChanged.emit()

    def _changed(self, entries, roles) -> None:
        rows = self._row[np.asarray(list(entries), dtype=np.int64)] if len(entries) else np.zeros(0, np.int64)
        rows = rows[rows >= 0]
        if rows.size:  # one signal for the span of visible rows
            self.dataChanged.emit(self.index(int(rows.min())), self.index(int(rows.max())), roles)
