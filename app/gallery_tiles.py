"""How a gallery tile is painted: the thumbnail, its name, the score badge, the inspector's verdict
chip (with the mark of a disagreement) and the flag frame."""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.gallery_model import (
    DisagreeRole,
    ErrorRole,
    FlaggedRole,
    GalleryModel,
    LabelRole,
    NormalRole,
    ScoreRole,
    ThumbRole,
    VerdictRole,
)
from app.theme import ACCENT, MUTED, SELECTION, TILE_BG

#: The inspector's verdicts as drawn on a tile: (label, fill colour).
VERDICT_CHIPS = {"ok": ("OK", "#2e9d5b"), "ng": ("NG", "#d0463b"), "unsure": ("?", "#c9a227")}
DISAGREE = "#ffd23f"  # the mark of a verdict that contradicts the detector's flag
NORMAL_MARK = "#2aa39a"  # "this one is normal": in the session's good set

THUMB_DEFAULT = 100  # thumbnail box, pixels (Ctrl+wheel changes it)
THUMB_MIN, THUMB_MAX = 56, 240
NAME_HEIGHT = 40  # room under the thumbnail for the name: two lines, the folder and the file


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


def tile_lines(label: str, fm: QFontMetrics, width: int) -> list[str]:
    """The lines a tile draws for ``label`` (a name from :func:`~app.gallery_model.label_names`):
    the folders that tell images apart on the first (``broken_large``, ``MT_Blowhole``, elided in
    the middle), the file on the second (elided on the left: its end, a number and the extension,
    is what tells files apart), so that neither is ever dropped."""
    folder, sep, file = label.rpartition("/")
    lines = [fm.elidedText(file, Qt.ElideLeft, width)]
    folder = "/".join(part for part in folder.split("/") if part != "…")
    if sep and folder:
        lines.insert(0, fm.elidedText(folder, Qt.ElideMiddle, width))
    return lines


def badge_colors(flagged: Optional[bool]) -> tuple[QColor, QColor]:
    """(fill, text) of a score badge: the flagged accent only on a flagged image; a neutral
    grey otherwise, so that no normal image's badge can be taken for a flagged one."""
    if flagged:
        return QColor(ACCENT), QColor("#ffffff")
    return QColor("#3a3d42"), QColor("#e6e6e6")


class TileDelegate(QStyledItemDelegate):
    """Paints a thumbnail, its name, a score badge in the heat-map colours and the flag frame."""

    def __init__(self, model: GalleryModel, parent=None) -> None:
        super().__init__(parent)
        self._model = model
        self.thumb = THUMB_DEFAULT

    def sizeHint(self, option, index) -> QSize:
        return tile_size(self.thumb)

    @staticmethod
    def name_font(base: QFont) -> QFont:
        """The names' font: a little smaller than the view's, so that two lines fit under the thumbnail."""
        font = QFont(base)
        font.setPointSizeF(max(7.0, base.pointSizeF() * 0.9))
        return font

    def name_width(self) -> int:
        """Pixels a tile's name lines may take."""
        return tile_size(self.thumb).width() - 14

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
        name_rect = QRect(r.left() + 4, box.bottom() + 2, r.width() - 8, r.bottom() - box.bottom() - 3)
        p.setPen(QColor("#e6e6e6") if selected else QColor("#c8cbd0"))
        font = self.name_font(option.font)
        p.setFont(font)
        lines = tile_lines(str(index.data(LabelRole)), QFontMetrics(font), name_rect.width())
        p.drawText(name_rect, Qt.AlignHCenter | Qt.AlignVCenter, "\n".join(lines))
        p.setFont(option.font)
        score = index.data(ScoreRole)
        if self._model.stale:  # results of a previous run: greyed until the new ones arrive
            p.setOpacity(0.4)
        if score is not None:
            self._badge(p, option.font, box, score, index.data(FlaggedRole))
        p.setOpacity(1.0)
        if index.data(NormalRole):
            self._normal_mark(p, option.font, box)
        verdict = index.data(VerdictRole)
        if verdict in VERDICT_CHIPS:
            self._verdict_chip(p, option.font, box, verdict, bool(index.data(DisagreeRole)))
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

    def _normal_mark(self, p: QPainter, base: QFont, box: QRect) -> None:
        """"This one is normal" at the thumbnail's bottom left, whatever the flag says now."""
        font = QFont(base)
        font.setBold(True)
        font.setPointSizeF(max(6.0, base.pointSizeF() * 0.85))
        p.setFont(font)
        fm = QFontMetrics(font)
        text = "normal"
        mark = QRect(box.left() + 3, box.bottom() - fm.height() - 5, fm.horizontalAdvance(text) + 8, fm.height() + 3)
        p.setPen(QPen(QColor(0, 0, 0, 160), 1))
        p.setBrush(QColor(NORMAL_MARK))
        p.drawRoundedRect(mark, 4, 4)
        p.setPen(QColor("#ffffff"))
        p.drawText(mark, Qt.AlignCenter, text)
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
