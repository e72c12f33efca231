"""The thumbnail grid: one list model and one painting delegate, no widget per image.

Thumbnails arrive from the controller as uint8 arrays decoded off the UI thread and are
turned into ``QImage`` here (cheap at thumbnail size). Scores and flags come from the scan
rows; the model itself sorts (by name or score) and filters (all or flagged, and for a
grouped zero-shot scan the normal or the suspect group) with numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QSizePolicy,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app.theme import ACCENT, MUTED, SELECTION, TILE_BG
from core.results import ScanRow
from core.results.threshold import Threshold
from core.session import disagrees

PathRole = Qt.UserRole + 1
ScoreRole = Qt.UserRole + 2
FlaggedRole = Qt.UserRole + 3
ThumbRole = Qt.UserRole + 4
ErrorRole = Qt.UserRole + 5
NameRole = Qt.UserRole + 6
VerdictRole = Qt.UserRole + 7
LabelRole = Qt.UserRole + 8  # the name as a tile shows it (see label_names)

#: The inspector's verdicts as drawn on a tile: (label, fill colour).
VERDICT_CHIPS = {"ok": ("OK", "#2e9d5b"), "ng": ("NG", "#d0463b"), "unsure": ("?", "#c9a227")}
DISAGREE = "#ffd23f"  # the mark of a verdict that contradicts the detector's flag

THUMB_DEFAULT = 100  # thumbnail box, pixels (Ctrl+wheel changes it)
THUMB_MIN, THUMB_MAX = 56, 240
NAME_HEIGHT = 34  # room under the thumbnail for the name


def tile_size(thumb: int) -> QSize:
    return QSize(thumb + 18, thumb + NAME_HEIGHT + 6)


def elide_name(name: str, fm: QFontMetrics, width: int) -> str:
    """``folder/file`` shortened to ``width`` pixels keeping what tells images apart: the
    file name whole and the folder elided in its middle (``brok…arge/000.png``, not
    ``broken_l…/000.png``); a file name too long by itself is elided in its middle."""
    if fm.horizontalAdvance(name) <= width:
        return name
    folder, sep, file = name.rpartition("/")
    if not sep:
        return fm.elidedText(name, Qt.ElideMiddle, width)
    room = width - fm.horizontalAdvance("/" + file)
    if room < fm.horizontalAdvance("W…W"):
        return fm.elidedText(file, Qt.ElideMiddle, width)
    return fm.elidedText(folder, Qt.ElideMiddle, room) + "/" + file


def badge_colors(flagged: Optional[bool]) -> tuple[QColor, QColor]:
    """(fill, text) of a score badge: the flagged accent only on a flagged image; a neutral
    grey otherwise, so that no normal image's badge can be taken for a flagged one."""
    if flagged:
        return QColor(ACCENT), QColor("#ffffff")
    return QColor("#3a3d42"), QColor("#e6e6e6")


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
                                                                    if disagrees(v, e.flagged) else ""))
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


class TileDelegate(QStyledItemDelegate):
    """Paints a thumbnail, its name, a score badge in the heat-map colours and the flag frame."""

    def __init__(self, model: GalleryModel, parent=None) -> None:
        super().__init__(parent)
        self._model = model
        self.thumb = THUMB_DEFAULT

    def sizeHint(self, option, index) -> QSize:
        return tile_size(self.thumb)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index) -> None:
        p.save()
        p.setRenderHint(QPainter.Antialiasing, True)
        r = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.State_Selected)
        flagged = bool(index.data(FlaggedRole))
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(SELECTION).darker(170) if selected else QColor(TILE_BG))
        p.drawRoundedRect(r, 6, 6)
        box = QRect(r.left() + (r.width() - self.thumb) // 2, r.top() + 6, self.thumb, self.thumb)
        thumb: Optional[QImage] = index.data(ThumbRole)
        if thumb is not None and not thumb.isNull():
            size = thumb.size().scaled(box.size(), Qt.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(box.center())
            p.drawImage(target, thumb)
        else:
            p.setPen(QColor(MUTED))
            p.drawText(box, Qt.AlignCenter | Qt.TextWordWrap,
                       "unreadable" if index.data(ErrorRole) else "…")
        name_rect = QRect(r.left() + 4, box.bottom() + 4, r.width() - 8, r.bottom() - box.bottom() - 6)
        p.setPen(QColor("#e6e6e6") if selected else QColor("#c8cbd0"))
        fm = QFontMetrics(option.font)
        p.drawText(name_rect, Qt.AlignHCenter | Qt.AlignVCenter,
                   elide_name(str(index.data(LabelRole)), fm, name_rect.width()))
        score = index.data(ScoreRole)
        if self._model.stale:  # results of a previous run: greyed until the new ones arrive
            p.setOpacity(0.4)
        if score is not None:
            self._badge(p, option.font, box, score, index.data(FlaggedRole))
        p.setOpacity(1.0)
        verdict = index.data(VerdictRole)
        if verdict in VERDICT_CHIPS:
            self._verdict_chip(p, option.font, box, verdict, disagrees(verdict, index.data(FlaggedRole)))
        if self._model.stale:
            p.setOpacity(0.4)
        if flagged:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(QColor(ACCENT), 3))
            p.drawRoundedRect(QRectF(r).adjusted(1.5, 1.5, -1.5, -1.5), 6, 6)
        elif selected:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(QColor(SELECTION), 2))
            p.drawRoundedRect(QRectF(r).adjusted(1, 1, -1, -1), 6, 6)
        p.restore()

    def _verdict_chip(self, p: QPainter, base: QFont, box: QRect, verdict: str, disagree: bool) -> None:
        """The inspector's verdict at the thumbnail's bottom right; a verdict that contradicts the
        detector's flag gets a yellow ring and a '≠'."""
        label, fill = VERDICT_CHIPS[verdict]
        text = f"≠ {label}" if disagree else label
        font = QFont(base)
        font.setBold(True)
        p.setFont(font)
        fm = QFontMetrics(font)
        w, h = fm.horizontalAdvance(text) + 10, fm.height() + 4
        chip = QRect(box.right() - w - 2, box.bottom() - h - 2, w, h)
        p.setPen(QPen(QColor(DISAGREE), 2) if disagree else QPen(QColor(0, 0, 0, 160), 1))
        p.setBrush(QColor(fill))
        p.drawRoundedRect(chip, 4, 4)
        p.setPen(QColor("#ffffff"))
        p.drawText(chip, Qt.AlignCenter, text)
        p.setFont(base)

    def _badge(self, p: QPainter, base: QFont, box: QRect, score: float, flagged: Optional[bool]) -> None:
        color, text_color = badge_colors(flagged)
        font = QFont(base)
        font.setBold(True)
        p.setFont(font)
        text = f"{score:.3g}"
        fm = QFontMetrics(font)
        badge = QRect(box.left() + 3, box.top() + 3, fm.horizontalAdvance(text) + 10, fm.height() + 4)
        p.setPen(QPen(QColor(0, 0, 0, 160), 1))
        p.setBrush(color)
        p.drawRoundedRect(badge, 4, 4)
        p.setPen(text_color)
        p.drawText(badge, Qt.AlignCenter, text)
        p.setFont(base)


class GalleryView(QListView):
    """Icon grid; arrows, PageUp/PageDown, Home/End move through it; Ctrl+wheel sizes the tiles."""

    zoom_requested = Signal(int)  # +1 larger tiles, -1 smaller

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.IconMode)
        self.setMovement(QListView.Static)
        self.setResizeMode(QListView.Adjust)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.Batched)
        self.setBatchSize(256)
        self.setWrapping(True)
        self.setSpacing(2)
        self.setGridSize(tile_size(THUMB_DEFAULT) + QSize(4, 4))
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.setMouseTracking(True)

    def wheelEvent(self, event) -> None:
        if event.modifiers() & Qt.ControlModifier:
            steps = event.angleDelta().y()
            if steps:
                self.zoom_requested.emit(1 if steps > 0 else -1)
            event.accept()
            return
        super().wheelEvent(event)

    def moveCursor(self, action, modifiers):
        """PageUp / PageDown move by one screenful of tiles, clamped to the first / last."""
        page = {QAbstractItemView.MovePageDown: 1, QAbstractItemView.MovePageUp: -1}.get(action)
        current, model = self.currentIndex(), self.model()
        if page is None or not current.isValid() or model.rowCount() == 0:
            return super().moveCursor(action, modifiers)
        grid = self.gridSize()
        per_page = max(1, self.viewport().width() // grid.width()) * max(1, self.viewport().height() // grid.height())
        return model.index(min(max(current.row() + page * per_page, 0), model.rowCount() - 1), 0)


class GalleryPanel(QWidget):
    """The gallery with its sort / filter bar. ``current_changed(path)`` when the selection moves."""

    current_changed = Signal(object)  # Path | None
    move_requested = Signal(object, str)  # Path, group to move it to ('normal' / 'suspect')
    review_filter_toggled = Signal(bool)  # the "to review" filter was switched on / off
    sort_changed = Signal(bool)  # by score (True) or by name

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.model = GalleryModel(self)
        self.view = GalleryView(self)
        self.view.setModel(self.model)
        self.delegate = TileDelegate(self.model, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.zoom_requested.connect(lambda step: self.set_thumb_size(round(self.thumb_size() * 1.15 ** step)))
        self.view.selectionModel().currentChanged.connect(self._current_moved)
        self._kept: Optional[Path] = None

        self.sort_combo = QComboBox()
        self.sort_combo.addItems(["Name", "Score (highest first)"])
        self.sort_combo.setToolTip("Order of the thumbnails (N / S)")
        self.sort_combo.currentIndexChanged.connect(lambda i: self.set_sort_by_score(i == 1))
        self.flagged_check = QCheckBox("Flagged only")
        self.flagged_check.setToolTip("Show only the images above the threshold (F)")
        self.flagged_check.toggled.connect(lambda on: self.model.set_order(flagged_only=on))
        self.review_check = QCheckBox("To review")
        self.review_check.setToolTip("Show only the unreviewed images in the review band or flagged, highest "
                                     "score first; each verdict takes its image off the list (R)")
        self.review_check.toggled.connect(self.review_filter_toggled)
        self.group_combo = QComboBox()
        self.group_combo.addItems(["All groups", "Normal group", "Suspect group"])
        self.group_combo.setToolTip("Zero-shot scans: show one group of the normal / suspect split")
        self.group_combo.currentIndexChanged.connect(lambda i: self.model.set_group_filter(None if i == 0 else i - 1))
        self.group_combo.hide()
        self.view.setContextMenuPolicy(Qt.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.count_label = QLabel("no folder open")
        self.count_label.setObjectName("muted")
        self.count_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # never widens the window

        bar = QHBoxLayout()
        bar.setContentsMargins(6, 4, 6, 2)
        bar.setSpacing(6)
        title = QLabel("Gallery")
        title.setObjectName("panelTitle")
        bar.addWidget(title)
        bar.addSpacing(12)
        bar.addWidget(self.count_label, 1)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Sort"))
        bar.addWidget(self.sort_combo)
        bar.addSpacing(8)
        bar.addWidget(self.flagged_check)
        bar.addWidget(self.review_check)
        bar.addWidget(self.group_combo)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        lay.addWidget(self.view, 1)
        m = self.model
        m.modelAboutToBeReset.connect(lambda: setattr(self, "_kept", self.current_path()))
        m.view_reset.connect(self._restore_current)
        for sig in (m.dataChanged, m.modelReset, m.layoutChanged, m.thumbs_progressed):
            sig.connect(self._update_count)

    # -- tile size
    def thumb_size(self) -> int:
        return self.delegate.thumb

    def set_thumb_size(self, px: int) -> None:
        """Thumbnail box in pixels (clamped to [THUMB_MIN, THUMB_MAX]); Ctrl+wheel calls this."""
        px = int(min(THUMB_MAX, max(THUMB_MIN, px)))
        if px == self.delegate.thumb:
            return
        self.delegate.thumb = px
        self.view.setGridSize(tile_size(px) + QSize(4, 4))
        self.view.doItemsLayout()
        current = self.view.currentIndex()
        if current.isValid():
            self.view.scrollTo(current)

    # -- controller slots
    def set_paths(self, paths: list[Path], root: Optional[Path] = None) -> None:
        self.model.set_paths(paths, root)
        if paths:
            self.select_row(0)

    def add_thumbnails(self, items: list) -> None:
        self.model.set_thumbnails(items)

    def clear_scores(self) -> None:
        self.model.clear_scores()

    def add_rows(self, rows: list[ScanRow]) -> None:
        self.model.set_rows(rows)
        self._sync_group_filter()

    def show_result(self, rows: list[ScanRow], detector: str, threshold: Optional[Threshold]) -> None:
        self.set_context(detector, threshold)
        self.model.clear_scores()
        self.model.set_rows(rows)
        self._sync_group_filter()

    def set_context(self, detector: str, threshold: Optional[Threshold]) -> None:
        self.model.detector_name, self.model.threshold = detector, threshold

    @property
    def stale(self) -> str:
        return self.model.stale

    def set_stale(self, text: str) -> None:
        """Grey the scores and flags out as those of a previous run (``text`` says which), or
        show them normally again ("")."""
        if text != self.model.stale:
            self.model.stale = text
            self.view.viewport().update()
            self._update_count()

    def refresh_flags(self, rows: list[ScanRow], threshold: Optional[Threshold]) -> None:
        self.model.threshold = threshold
        self.model.set_rows(rows)
        self._sync_group_filter()

    def _sync_group_filter(self) -> None:
        """The group filter is offered only while a grouped (zero-shot) scan is shown."""
        grouped = self.model.has_groups()
        self.group_combo.setVisible(grouped)
        if not grouped and self.group_combo.currentIndex() != 0:
            self.group_combo.setCurrentIndex(0)

    def set_group_filter(self, group: Optional[str]) -> None:
        """'normal', 'suspect' or None (all)."""
        self.group_combo.setCurrentIndex({None: 0, "normal": 1, "suspect": 2}[group])

    def _context_menu(self, pos) -> None:
        idx = self.view.indexAt(pos)
        if not idx.isValid():
            return
        entry = self.model._entries[int(self.model._view[idx.row()])]
        if entry.group not in ("normal", "suspect"):
            return
        other = "normal" if entry.group == "suspect" else "suspect"
        menu = QMenu(self)
        act = menu.addAction(f"Move to the {other} group")
        act.triggered.connect(lambda: self.move_requested.emit(entry.path, other))
        menu.exec(self.view.viewport().mapToGlobal(pos))

    # -- sorting, filtering, selection
    def set_sort_by_score(self, on: bool) -> None:
        self.sort_combo.blockSignals(True)
        self.sort_combo.setCurrentIndex(1 if on else 0)
        self.sort_combo.blockSignals(False)
        self.model.set_order(by_score=on)
        self.sort_changed.emit(bool(on))
        current = self.view.currentIndex()
        if current.isValid():
            self.view.scrollTo(current)

    def set_flagged_only(self, on: bool) -> None:
        self.flagged_check.setChecked(on)

    def toggle_flagged_only(self) -> None:
        self.flagged_check.setChecked(not self.flagged_check.isChecked())
        self.view.setFocus()

    def visible_paths(self) -> list[Path]:
        return [self.model.path_at(i) for i in range(self.model.rowCount())]

    def current_path(self) -> Optional[Path]:
        idx = self.view.currentIndex()
        return idx.data(PathRole) if idx.isValid() else None

    def select_row(self, row: int) -> None:
        """Select by position in the visible (sorted, filtered) order."""
        idx = self.model.index(row, 0)
        if idx.isValid():
            self.view.setCurrentIndex(idx)
            self.view.scrollTo(idx)

    def select_path(self, path: Path) -> bool:
        row = self.model.row_of(path)
        if row is None:
            return False
        idx = self.model.index(row, 0)
        self.view.setCurrentIndex(idx)
        self.view.scrollTo(idx, QAbstractItemView.PositionAtCenter)
        return True

    def _restore_current(self) -> None:
        """After the visible set changed: the same image if still shown, else the first."""
        kept, self._kept = self._kept, None
        if not (kept is not None and self.select_path(kept)) and self.model.rowCount():
            self.select_row(0)

    def _current_moved(self, current, _previous) -> None:
        self.current_changed.emit(current.data(PathRole) if current.isValid() else None)

    def _update_count(self, *_args) -> None:
        n, scored, flagged, visible = self.model.counts()
        if n == 0:
            self.count_label.setText("no images")
            return
        text = f"{n} images"
        if self.model.thumbs_done < n:
            text += f" · loading thumbnails {self.model.thumbs_done} / {n}"
        if scored:
            text += f" · {scored} scored · {flagged} flagged"
        if self.model.flagged_only or self.model.group_filter is not None or self.model.review_only is not None:
            text += f" · showing {visible}"
        if self.model.stale and scored:
            text += f" · {self.model.stale}, greyed until the new results arrive"
        self.count_label.setText(text)
        self.count_label.setToolTip(text)
