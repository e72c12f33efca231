"""The thumbnail grid: one list model (:mod:`app.gallery_model`) and one painting delegate
(:mod:`app.gallery_tiles`), no widget per image, with its sort / filter bar.

Scores and flags come from the scan rows; the model itself sorts (by name or score) and filters
(all or flagged, and for a grouped zero-shot scan the normal or the suspect group) with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.gallery_model import (  # noqa: F401 - the roles and names are read through this module too
    DisagreeRole,
    ErrorRole,
    FlaggedRole,
    GalleryModel,
    LabelRole,
    NameRole,
    NormalRole,
    PathRole,
    ScoreRole,
    ThumbRole,
    VerdictRole,
    label_names,
    qimage_from_array,
)
from app.gallery_tiles import (  # noqa: F401
    DISAGREE,
    THUMB_DEFAULT,
    THUMB_MAX,
    THUMB_MIN,
    VERDICT_CHIPS,
    TileDelegate,
    badge_colors,
    elide_name,
    tile_lines,
    tile_size,
)
from core.results import ScanRow
from core.results.threshold import Threshold


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
        self.counts = None  # ReviewCounts of the rows shown (set by the window)
        self.panel_detector = ""  # the detector the detector panel shows
        self.empty_label = QLabel("")
        self.empty_label.setObjectName("muted")
        self.empty_label.setAlignment(Qt.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.hide()

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
        lay.addWidget(self.empty_label, 1)
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
        self.empty_label.setText(f"{root} holds no image files (png, jpg, bmp, tif, webp).\n\nOpen another folder, "
                                 "or tick 'Include subfolders' in the Folder panel." if root is not None else "")
        self.empty_label.setVisible(not paths and root is not None)
        self.view.setVisible(bool(paths) or root is None)
        if paths:
            self.select_row(0)

    def set_panel_detector(self, name: str) -> None:
        """The detector the panel shows: results of another one say so in the header."""
        self.panel_detector = name
        self._update_count()

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

    def set_counts(self, counts) -> None:
        """The controller's :class:`~core.results.review.ReviewCounts`: the header's numbers and the ≠ marks."""
        self.counts = counts
        self.model.set_disagreeing(counts.disagreeing)
        self._update_count()

    def _update_count(self, *_args) -> None:
        n, _scored, _flagged, visible = self.model.counts()
        if n == 0:
            self.count_label.setText("no images")
            return
        text = f"{n} images"
        if self.model.thumbs_done < n:
            text += f" · loading thumbnails {self.model.thumbs_done} / {n}"
        scored = self.counts.n_images if self.counts is not None else 0
        if scored:
            by = self.model.detector_name
            text += (f" · {scored} scored" if scored < n else "") + f" · {self.counts.n_flagged} flagged"
            text += f" by {by}" if by else ""
            if by and self.panel_detector and self.panel_detector != by:
                text += f" (the panel shows {self.panel_detector}: Run scores with it)"
        if self.model.flagged_only or self.model.group_filter is not None or self.model.review_only is not None:
            text += f" · showing {visible}"
        if self.model.stale and scored:
            text += f" · {self.model.stale}, greyed until the new results arrive"
        self.count_label.setText(text)
        self.count_label.setToolTip(text)
