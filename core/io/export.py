"""Writing scan results: ``results.csv``, ``flagged.txt``, ``skipped.csv``, ``heatmaps/``.

Every file is written to a temporary name and renamed, so an interrupted export never
leaves a truncated results table behind (``scan`` also writes the whole set into a fresh
folder first: :mod:`core.io.run_folder`).

Paths are written as text a person and a CSV reader can use: a file name that is not valid
UTF-8 (possible on Linux) has each undecodable byte written as ``\\xNN``
(:func:`display_path`); in ``flagged.txt`` a path holding a newline, a carriage return or a
double quote is written in double quotes with inner quotes doubled (the CSV rule), so every
line is exactly one file. ``results.csv`` names each row's heat map in its ``heatmap`` column.

**Spreadsheet formulas.** A text cell (a path, a reason, a note, a user, a text column) that a
spreadsheet would run as a formula — it starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return (the OWASP list for CSV injection) — is written with a ``'`` in front and in
double quotes (:func:`csv_text`), so a spreadsheet shows it as text. So is a text cell that
starts with ``'`` itself, which makes the rule reversible: the exact text of any cell is the
cell with one leading ``'`` removed when it has one (:func:`csv_text_raw`). Numbers (scores,
thresholds, detector values, negative ones included) are never changed. ``flagged.txt`` follows
the same rule.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from core.data.images import Skipped
from core.io.colormap import COLORMAP_NAME, colorize, lut, normalise, robust_range
from core.results import ScanResult, ScanRow

RESULTS_NAME = "results.csv"
FLAGGED_NAME = "flagged.txt"
SKIPPED_NAME = "skipped.csv"
HEATMAP_DIR = "heatmaps"
SCALE_NAME = "heatmap_scale.json"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


#: A text cell starting with one of these is run as a formula by spreadsheets (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run: ``'`` in front when it starts like a formula or
    with ``'`` (see the module docstring; :func:`csv_text_raw` reverses it)."""
    return "'" + text if text[:1] in FORMULA_START or text[:1] == "'" else text


def csv_text_raw(cell: str) -> str:
    """The exact text of a cell written by :func:`csv_text` (and of any number cell)."""
    return cell[1:] if cell[:1] == "'" else cell


def csv_row(cells: Iterable[str]) -> str:
    """One CSV line: a cell is double-quoted (inner quotes doubled) when it holds a comma, a
    quote or a line break, as :mod:`csv` does, and when :func:`csv_text` neutralised it."""
    out = ['"' + c.replace('"', '""') + '"' if c[:1] == "'" or any(ch in c for ch in ',"\r\n') else c
           for c in cells]
    return (",".join(out) if out != [""] else '""') + "\n"


def _csv_text(header: list[str], rows: Iterable[list]) -> str:
    return csv_row(header) + "".join(csv_row(r) for r in rows)


def display_path(path) -> str:
    """``path`` as valid UTF-8 text: bytes of a non-UTF-8 file name become ``\\xNN``."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def flagged_line(path) -> str:
    """One line of ``flagged.txt``: the path, quoted CSV-style if it holds a newline or a quote,
    with a ``'`` in front (and quoted) when it starts like a spreadsheet formula."""
    text = csv_text(display_path(path))
    if any(c in text for c in '"\n\r') or text[:1] == "'":
        text = '"' + text.replace('"', '""') + '"'
    return text + "\n"


def csv_value(v) -> str:
    """One CSV cell: empty for None, true/false, floats to 8 significant digits, other numbers
    as they print, text through :func:`csv_text`."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.8g}"
    if isinstance(v, (int, np.number)):
        return str(v)
    return csv_text(str(v))


def results_csv(rows: list[ScanRow], heatmaps: Optional[list[str]] = None) -> str:
    """The results table; with ``heatmaps`` (one relative path or "" per row) a ``heatmap`` column."""
    extra: list[str] = []
    for r in rows:
        for k in r.columns:
            if k not in extra:
                extra.append(k)
    header = ["path", "score", "flagged", *extra, *(["heatmap"] if heatmaps is not None else [])]
    body = ([csv_text(display_path(r.path)), csv_value(r.score), csv_value(r.flagged),
             *(csv_value(r.columns.get(k)) for k in extra), *([heatmaps[i]] if heatmaps is not None else [])]
            for i, r in enumerate(rows))
    return _csv_text(header, body)


def write_results(out_dir: str | os.PathLike, rows: list[ScanRow], heatmaps: Optional[list[str]] = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    _write_text(path, results_csv(rows, heatmaps))
    return path


def write_flagged(out_dir: str | os.PathLike, rows: list[ScanRow], with_scores: bool = False) -> Path:
    """``flagged.txt`` (one path per line); with ``with_scores`` also ``flagged.csv`` (path,score)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flagged = [r for r in rows if r.flagged]
    _write_text(out / FLAGGED_NAME, "".join(flagged_line(r.path) for r in flagged))
    if with_scores:
        _write_text(out / "flagged.csv", _csv_text(["path", "score"], ([csv_text(display_path(r.path)), csv_value(r.score)]
                                                                      for r in flagged)))
    return out / FLAGGED_NAME


def write_skipped(out_dir: str | os.PathLike, skipped: list[Skipped]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SKIPPED_NAME
    _write_text(path, _csv_text(["path", "reason"], [skipped_cells(s) for s in skipped]))
    return path


def skipped_cells(s: Skipped) -> list[str]:
    """The two cells of a ``skipped.csv`` row (``path,reason``)."""
    return [csv_text(display_path(s.path)), csv_text(s.reason)]


def heatmap_names(rows: list[ScanRow]) -> list[str]:
    """``<stem>.png`` per row; stems that repeat (recursive folders) get their parent folders prefixed."""
    return heatmap_names_for([r.path for r in rows])


def heatmap_names_for(paths: list[Path]) -> list[str]:
    """:func:`heatmap_names` for a list of paths (a streamed scan names every listed image first)."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names, used = [], set()
    for path, s in zip(paths, stems):
        name = s
        if counts[s] > 1:
            parts = [p for p in path.parent.parts[-3:] if p not in ("/", "\\")]
            name = "__".join([*parts, s])
        name = re.sub(r"[^\w.\-]+", "_", name)
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names.append(name + ".png")
    return names


def write_heatmaps(out_dir: str | os.PathLike, rows: list[ScanRow],
                   value_range: Optional[tuple[float, float]] = None) -> tuple[Path, int]:
    """Colour heat maps (shared colormap, one scale for the whole batch) at each image's size.

    The scale is written beside the folder, to ``heatmap_scale.json``, so a colour can be read
    back as a value (``heatmaps/`` itself holds one PNG per image and nothing else).
    """
    with_maps = [r for r in rows if r.anomaly_map is not None]
    folder = Path(out_dir) / HEATMAP_DIR
    if not with_maps:
        return folder, 0
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = value_range or robust_range([r.anomaly_map.astype(np.float32) for r in with_maps])
    for r, name in zip(with_maps, heatmap_names(with_maps)):
        write_heatmap(folder, name, r.anomaly_map, r.image_shape, lo, hi)
    write_scale(folder.parent, lo, hi)
    return folder, len(with_maps)


#: Heat maps of images larger than this are coloured in bands of rows (see :func:`_colour_in_bands`).
BANDED_FROM_PIXELS = 16_000_000


def _colour_in_bands(m: np.ndarray, h: int, w: int, lo: float, hi: float, rows: int = 256) -> np.ndarray:
    """The BGR heat map of the small map ``m`` brought up to ``h`` x ``w``, made a band of rows
    at a time: the same bilinear upsampling as ``cv2.resize`` (columns first, then rows, pixel
    centres aligned), but never a full-size float map (a 12000 x 12000 image: 576 MB each for
    the map, its normalised copy and their temporaries, where the BGR result is 432 MB)."""
    mh = m.shape[0]
    cols = cv2.resize(m, (w, mh), interpolation=cv2.INTER_LINEAR) if m.shape[1] != w else m
    bgr = np.empty((h, w, 3), np.uint8)
    table = np.ascontiguousarray(lut()[:, ::-1])
    for y0 in range(0, h, rows):
        y = (np.arange(y0, min(h, y0 + rows), dtype=np.float64) + 0.5) * (mh / h) - 0.5
        y = np.clip(y, 0.0, mh - 1)
        i0 = np.floor(y).astype(np.int64)
        i1 = np.minimum(i0 + 1, mh - 1)
        t = (y - i0).astype(np.float32)[:, None]
        band = cols[i0] * (1.0 - t) + cols[i1] * t
        bgr[y0:y0 + len(y)] = table[np.round(normalise(band, lo, hi) * 255.0).astype(np.uint8)]
    return bgr


def write_heatmap(folder: Path, name: str, m: np.ndarray, image_shape: tuple[int, int], lo: float, hi: float) -> Path:
    """One colour heat map ``folder/name`` at the image's size (H, W), on the scale [lo, hi]."""
    m = m.astype(np.float32)
    h, w = image_shape if image_shape[0] > 0 else m.shape
    if m.shape != (h, w) and h * w > BANDED_FROM_PIXELS:
        bgr = _colour_in_bands(m, h, w, lo, hi)
    else:
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        bgr = colorize(m, lo, hi)[:, :, ::-1]
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - encoding a uint8 RGB array does not fail
        raise OSError(f"could not encode heat map {name}")
    tmp = folder / f".{name}.tmp"
    buf.tofile(str(tmp))
    os.replace(tmp, folder / name)
    return folder / name


def write_scale(out_dir: Path, lo: float, hi: float) -> Path:
    """``heatmap_scale.json``: the colormap and the values of its two ends."""
    path = Path(out_dir) / SCALE_NAME
    _write_text(path, json.dumps({"colormap": COLORMAP_NAME, "min": lo, "max": hi}, indent=2))
    return path


class ResultsAppender:
    """``results.csv`` and ``flagged.txt`` written row by row, flushed as they come (a streamed scan).

    The header is that of :func:`results_csv`: ``path,score,flagged``, the detector's columns
    as the first row has them (a detector gives the same columns for every image), and
    ``heatmap`` when ``heatmaps`` is true and the first row has a map. ``header`` presets it
    (a resumed scan keeps the header of the run it continues).
    """

    def __init__(self, out_dir: str | os.PathLike, heatmaps: bool, header: Optional[list[str]] = None) -> None:
        out = Path(out_dir)
        self.heatmaps = heatmaps
        self.header: Optional[list[str]] = list(header) if header else None
        self._csv_fh = open(out / RESULTS_NAME, "w", encoding="utf-8", newline="")
        self._flag_fh = open(out / FLAGGED_NAME, "w", encoding="utf-8", newline="")
        if self.header:
            self._csv_fh.write(csv_row(self.header))
        self.rows = 0
        self.flagged = 0

    def _start(self, row: ScanRow) -> list[str]:
        if self.header is None:
            with_map = self.heatmaps and row.anomaly_map is not None
            self.header = ["path", "score", "flagged", *row.columns, *(["heatmap"] if with_map else [])]
            self._csv_fh.write(csv_row(self.header))
        return self.header

    def add(self, row: ScanRow, heatmap: str = "") -> list[str]:
        """Write ``row``; returns the cells written (in :attr:`header` order)."""
        header = self._start(row)
        values = {"path": csv_text(display_path(row.path)), "score": csv_value(row.score),
                  "flagged": csv_value(row.flagged),
                  "heatmap": heatmap if row.anomaly_map is not None else ""}
        return self.add_fields({k: values[k] if k in values else csv_value(row.columns.get(k)) for k in header})

    def add_fields(self, fields: dict[str, str]) -> list[str]:
        """A row given as its cells per column, as written (a row carried over from an interrupted
        run); returns the cells written."""
        if self.header is None:
            self.header = list(fields)
            self._csv_fh.write(csv_row(self.header))
        cells = [fields.get(k, "") for k in self.header]
        self._csv_fh.write(csv_row(cells))
        self.rows += 1
        if fields.get("flagged") == "true":
            self._flag_fh.write(flagged_line(csv_text_raw(fields["path"])))
            self.flagged += 1
        return cells

    def flush(self) -> None:
        self._csv_fh.flush()
        self._flag_fh.flush()

    def close(self) -> None:
        if self.header is None:  # no row at all: still a valid, empty table
            self._csv_fh.write(csv_row(["path", "score", "flagged"]))
        self._csv_fh.close()
        self._flag_fh.close()


def export_scan(out_dir: str | os.PathLike, result: ScanResult, heatmaps: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    names: Optional[list[str]] = None
    written: dict[str, Path] = {}
    if heatmaps:
        folder, n = write_heatmaps(out, result.rows)
        if n:
            written["heatmaps"] = folder
            with_maps = [i for i, r in enumerate(result.rows) if r.anomaly_map is not None]
            names = [""] * len(result.rows)
            for i, name in zip(with_maps, heatmap_names([result.rows[i] for i in with_maps])):
                names[i] = f"{HEATMAP_DIR}/{name}"
    written = {
        "results": write_results(out, result.rows, names),
        "flagged": write_flagged(out, result.rows),
        "skipped": write_skipped(out, result.skipped),
        **written,
    }
    return written
