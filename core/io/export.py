"""Writing scan results: ``results.csv``, ``flagged.txt``, ``skipped.csv``, ``heatmaps/``.

Every file is written to a temporary name and renamed, so an interrupted export never
leaves a truncated results table behind (``scan`` also writes the whole set into a fresh
folder first: :mod:`core.io.run_folder`).

Paths are written as text a person and a CSV reader can use: a file name that is not valid
UTF-8 (possible on Linux) has each undecodable byte written as ``\\xNN``
(:func:`display_path`); in ``flagged.txt`` a path holding a newline, a carriage return or a
double quote is written in double quotes with inner quotes doubled (the CSV rule), so every
line is exactly one file. ``results.csv`` names each row's heat map in its ``heatmap`` column.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from core.data.images import Skipped
from core.io.colormap import COLORMAP_NAME, colorize, robust_range
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


def _csv_text(header: list[str], rows: Iterable[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def display_path(path) -> str:
    """``path`` as valid UTF-8 text: bytes of a non-UTF-8 file name become ``\\xNN``."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def flagged_line(path) -> str:
    """One line of ``flagged.txt``: the path, quoted CSV-style if it holds a newline or a quote."""
    text = display_path(path)
    if any(c in text for c in '"\n\r'):
        text = '"' + text.replace('"', '""') + '"'
    return text + "\n"


def csv_value(v) -> str:
    """One CSV cell: empty for None, true/false, floats to 8 significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def results_csv(rows: list[ScanRow], heatmaps: Optional[list[str]] = None) -> str:
    """The results table; with ``heatmaps`` (one relative path or "" per row) a ``heatmap`` column."""
    extra: list[str] = []
    for r in rows:
        for k in r.columns:
            if k not in extra:
                extra.append(k)
    header = ["path", "score", "flagged", *extra, *(["heatmap"] if heatmaps is not None else [])]
    body = ([display_path(r.path), csv_value(r.score), csv_value(r.flagged), *(csv_value(r.columns.get(k)) for k in extra),
             *([heatmaps[i]] if heatmaps is not None else [])] for i, r in enumerate(rows))
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
        _write_text(out / "flagged.csv", _csv_text(["path", "score"], ([display_path(r.path), csv_value(r.score)] for r in flagged)))
    return out / FLAGGED_NAME


def write_skipped(out_dir: str | os.PathLike, skipped: list[Skipped]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SKIPPED_NAME
    _write_text(path, _csv_text(["path", "reason"], ([display_path(s.path), s.reason] for s in skipped)))
    return path


def heatmap_names(rows: list[ScanRow]) -> list[str]:
    """``<stem>.png`` per row; stems that repeat (recursive folders) get their parent folders prefixed."""
    stems = [r.path.stem for r in rows]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names, used = [], set()
    for r, s in zip(rows, stems):
        name = s
        if counts[s] > 1:
            parts = [p for p in r.path.parent.parts[-3:] if p not in ("/", "\\")]
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
        m = r.anomaly_map.astype(np.float32)
        h, w = r.image_shape if r.image_shape[0] > 0 else m.shape
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = colorize(m, lo, hi)
        ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
        if not ok:  # pragma: no cover - encoding a uint8 RGB array does not fail
            raise OSError(f"could not encode heat map for {r.path}")
        tmp = folder / f".{name}.tmp"
        buf.tofile(str(tmp))
        os.replace(tmp, folder / name)
    _write_text(folder.parent / SCALE_NAME, json.dumps({"colormap": COLORMAP_NAME, "min": lo, "max": hi}, indent=2))
    return folder, len(with_maps)


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
