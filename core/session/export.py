"""Exporting a session's run: ``results.csv`` with the verdicts and provenance, ``flagged.txt``,
``skipped.csv``, ``heatmaps/`` and ``provenance.json``.

``results.csv`` has one row per image: path, score, flagged, the inspector's ``verdict``,
``disagrees``, the note, who gave the verdict and when, the detector's columns, and then the
provenance of the run repeated on every row (``run``, ``detector``, ``model_fingerprint``,
``threshold``, ``threshold_calibration``, ``session``, ``run_finished``, ``app_version``), so a
row copied elsewhere still says where it came from. Flags follow the session's current
threshold and group moves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from core.io.export import csv_row, csv_text, csv_value, display_path, write_flagged, write_heatmaps, write_skipped
from core.io.run_folder import RunFolder
from core.session.identity import app_version, now
from core.session.store import Session

RESULTS_NAME = "results.csv"
PROVENANCE_NAME = "provenance.json"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def provenance(session: Session, run_id: Optional[int] = None) -> dict:
    info = session.run(run_id)
    t = info.threshold
    value = session.threshold_value(info.id)
    band = session.review_band(info.id)
    kept = session.model(info.fingerprint)
    return {
        "session": display_path(session.path),
        "folder": display_path(session.folder) if session.folder else None,
        "run": info.id,
        "detector": info.detector,
        "model_fingerprint": info.fingerprint,
        "model_kept": None if kept is None else {"path": str(kept.path), "weights_sha256": kept.weights_sha256,
                                                 "good_folder": str(kept.good_folder) if kept.good_folder else None},
        "settings": info.settings,
        "threshold": value,
        "threshold_calibration": t.describe() if t is not None else None,
        "threshold_at_run": t.to_dict() if t is not None else None,
        "threshold_changes": session.threshold_history(info.id),
        "review_band": None if band is None else {"low": band.low, "high": band.high},
        "run_by": info.user,
        "run_started": info.started_at,
        "run_finished": info.finished_at,
        "images_new": info.n_new,
        "images_reused": info.n_reused,
        "app_version_run": info.app_version,
        "app_version": app_version(),
        "exported": now(),
        "exported_by": session.user,
    }


def export_session(session: Session, out_dir: str | os.PathLike, run_id: Optional[int] = None,
                   heatmaps: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Write the run's files into ``out_dir``; returns ``{kind: path}``.

    ``out_dir`` follows a scan's output rules (:class:`core.io.run_folder.RunFolder`): checked
    first (not the session's folder or above it; missing, empty or an earlier export or scan,
    else refused unless ``overwrite``), written into a fresh folder and put in place whole, so a
    re-export leaves no earlier heat maps; it gets the run marker, so a later scan of a folder
    holding it never takes its heat maps for parts. Raises
    :class:`~core.io.run_folder.OutputFolderError`.
    """
    info = session.run(run_id)
    protect = [session.folder] if session.folder is not None and session.folder.is_absolute() else []
    with RunFolder(out_dir, overwrite=overwrite, protect=protect) as run:
        assert run.temp is not None
        written, n_rows = _export_into(session, run.temp, info.id, heatmaps)
        names = {k: v.relative_to(run.temp) for k, v in written.items()}
        run.commit(True, info={"export": True, "run": info.id, "rows": n_rows})
        return {k: run.out / v for k, v in names.items()}


def _export_into(session: Session, out: Path, run_id: int, heatmaps: bool) -> tuple[dict[str, Path], int]:
    info = session.run(run_id)
    result = session.load_run(info.id, maps=heatmaps)
    verdicts, notes = session.verdicts(), session.notes()
    counts = session.review_counts(info.id, result)  # flags and disagreements as the window and the report count them
    for r in result.rows:
        r.flagged = counts.flags[str(r.path)]
    prov = provenance(session, info.id)
    extra: list[str] = []
    for r in result.rows:
        for k in r.columns:
            if k not in extra:
                extra.append(k)
    prov_cols = ["run", "detector", "model_fingerprint", "threshold", "threshold_calibration", "session",
                 "run_finished", "app_version"]
    header = ["path", "score", "flagged", "verdict", "disagrees", "note", "verdict_by", "verdict_at", *extra,
              *prov_cols]
    lines = [csv_row(header)]
    for r in result.rows:
        d = verdicts.get(r.path)
        n = notes.get(r.path)
        key = str(r.path)
        lines.append(csv_row([csv_text(display_path(r.path)), csv_value(r.score), csv_value(counts.flags[key]),
                              csv_value(d.value if d else None), csv_value(key in counts.disagreeing),
                              csv_value(n.value if n else None), csv_value(d.user if d else None),
                              csv_value(d.at if d else None), *(csv_value(r.columns.get(k)) for k in extra),
                              *(csv_value(prov[k]) for k in prov_cols)]))
    written = {"results": out / RESULTS_NAME}
    _atomic_text(written["results"], "".join(lines))
    written["flagged"] = write_flagged(out, result.rows)
    written["skipped"] = write_skipped(out, result.skipped)
    _atomic_text(out / PROVENANCE_NAME, json.dumps(prov, indent=2))
    written["provenance"] = out / PROVENANCE_NAME
    if heatmaps:
        folder, n = write_heatmaps(out, result.rows)
        if n:
            written["heatmaps"] = folder
    return written, len(result.rows)
