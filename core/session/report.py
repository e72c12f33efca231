"""One self-contained HTML report of a session's run: nothing but the file is needed to read it.

It holds the summary counts, the score histogram with the threshold and the review band, the
ROC of the inspector's own verdicts (when there are OK and NG verdicts), the flagged and the
disagreeing images with their heat-map overlays and notes (images embedded as JPEG data URIs),
and the provenance: detector, model fingerprint, settings, threshold and how it was calibrated
and changed, who ran it and when, the app version and the session file.

Plain HTML and inline SVG (:mod:`.svg`) written with the standard library: a template engine
would add a dependency for one page, and pyqtgraph is not allowed in the engine.
"""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from core.data.images import ImageReadError, read_thumbnail
from core.io.colormap import colorize, normalise, robust_range
from core.metrics import image_auroc
from core.results import ScanRow
from core.session.identity import app_version, now
from core.session.store import Session
from core.session.svg import colorbar_svg, histogram_svg, roc_svg

THUMB = 220
MAX_IMAGES = 80

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
.warn b{color:#c0392b}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;
vertical-align:top}
th{background:#f6f6f6}.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.img{display:flex;gap:4px}.img img{border:1px solid #ccc;max-width:220px}
.v-ng{color:#c0392b;font-weight:600}.v-ok{color:#1e8449;font-weight:600}.v-unsure{color:#7d3c98;font-weight:600}
.dis{background:#fdecea}.tag{font-size:11px;border-radius:3px;padding:1px 5px;background:#c0392b;color:#fff}
.legend{font-size:12px;color:#555}
"""


def _data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding a uint8 RGB array does not fail
        raise OSError("could not encode a report image")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _thumbnail(path: Path, shape: tuple[int, int]) -> tuple[Optional[np.ndarray], str]:
    try:
        img = read_thumbnail(path, THUMB)
    except (ImageReadError, OSError) as exc:
        return None, f"image not readable here ({exc})"
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img, ""


def _overlay(img: Optional[np.ndarray], m: Optional[np.ndarray], lo: float, hi: float,
             shape: tuple[int, int]) -> Optional[np.ndarray]:
    if m is None:
        return None
    if img is None:
        h, w = shape if shape[0] > 0 else m.shape
        s = THUMB / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
    else:
        size = (img.shape[1], img.shape[0])
    m = cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat = colorize(m, lo, hi)
    if img is None:
        return heat
    alpha = 0.75 * normalise(m, lo, hi)[:, :, None]  # the image shows through where the map is low
    return ((1 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)).round().astype(np.uint8)


def _verdict_html(v: Optional[str]) -> str:
    return f'<span class="v-{v}">{v.upper()}</span>' if v else '<span style="color:#999">–</span>'


def build_report(session: Session, run_id: Optional[int] = None, max_images: int = MAX_IMAGES) -> str:
    """The report's HTML text for ``run_id`` (default: the latest run)."""
    info = session.run(run_id)
    result = session.load_run(info.id)
    verdicts = {p: d.value for p, d in session.verdicts().items()}
    notes = session.notes()
    band = session.review_band(info.id)
    thr_value = session.threshold_value(info.id)
    status = session.review_counts(info.id, result)  # the one function of every count (the window's too)
    rows = result.rows
    scores = [r.score for r in rows]

    # ---------------------------------------------------------------- summary
    flagged_by = ("suspect group" if result.grouping is not None else
                  "no threshold" if thr_value is None else f"score > {thr_value:.4g}")
    cards = [("images", len(rows)), (f"flagged ({flagged_by})", status.n_flagged), ("skipped", len(result.skipped)),
             ("reviewed", status.reviewed), ("to review", status.to_review), ("disagree", status.disagree)]
    cards += [(f"verdict {k.upper()}", n) for k, n in status.verdicts.items()]
    if status.zones is not None:  # the band's own bounds beside its counts: "fail" is not "flagged"
        bounds = {"pass": f"score ≤ {band.low:.4g}", "review": f"{band.low:.4g} < score ≤ {band.high:.4g}",
                  "fail": f"score > {band.high:.4g}"}
        cards += [(f"band {z} ({bounds[z]})", n) for z, n in status.zones.items()]
    card_html = "".join(f'<div class="card{" warn" if k == "disagree" and n else ""}"><b>{n}</b><span>{escape(k)}'
                        f'</span></div>' for k, n in cards)

    # ---------------------------------------------------------------- charts
    marks = {k: [r.score for r in rows if verdicts.get(r.path) == k] for k in ("ng", "ok", "unsure")}
    marks = {k: v for k, v in marks.items() if v}
    hist = histogram_svg(scores, None if result.grouping is not None else thr_value,
                         (band.low, band.high) if band else None, marks)
    legend = ('<p class="legend">Red line: decision threshold. Shaded: review band (pass at or below the low '
              'threshold, fail above the high one, review between). Ticks under the axis: scores of images with '
              'a verdict.</p>')
    labelled = [(1 if verdicts[r.path] == "ng" else 0, r.score) for r in rows if verdicts.get(r.path) in ("ng", "ok")]
    roc_html = ('<p>No ROC: it needs both OK and NG verdicts (it is drawn from the inspector\'s own labels, '
                'so it appears once images have been reviewed).</p>')
    if labelled and len({y for y, _ in labelled}) == 2:
        y, s = zip(*labelled)
        auc = image_auroc(list(y), list(s))
        roc_html = (roc_svg(list(y), list(s), thr_value if result.grouping is None else None, auc)
                    + f'<p class="legend">From {len(labelled)} verdicts ({sum(y)} NG, {len(y) - sum(y)} OK); '
                      '"unsure" verdicts are left out.</p>')

    # ---------------------------------------------------------------- images
    dis = [r for r in rows if str(r.path) in status.disagreeing]
    flagged = [r for r in sorted(rows, key=lambda r: -r.score) if status.flags[str(r.path)] and r not in dis]
    chosen: list[tuple[ScanRow, bool]] = [(r, True) for r in dis] + [(r, False) for r in flagged]
    hidden = max(0, len(chosen) - max_images)
    chosen = chosen[:max_images]
    maps = {id(r): session.load_map(r.path, info.id) for r, _ in chosen}
    present = [m.astype(np.float32) for m in maps.values() if m is not None]
    lo, hi = robust_range(present) if present else (0.0, 1.0)
    items = []
    for r, is_dis in chosen:
        img, why = _thumbnail(r.path, r.image_shape)
        over = _overlay(img, maps[id(r)], lo, hi, r.image_shape)
        pics = "".join(f'<img src="{_data_uri(a)}" alt="{escape(alt)}">' for a, alt in ((img, "image"), (over, "heat map"))
                       if a is not None)
        note = notes.get(r.path)
        v = verdicts.get(r.path)
        group = r.columns.get("group", "")
        items.append(
            f'<tr class="{"dis" if is_dis else ""}"><td><div class="img">{pics}</div>{escape(why)}</td>'
            f'<td class="mono">{escape(str(r.path))}</td><td>{r.score:.5g}</td>'
            f'<td>{"yes" if status.flags[str(r.path)] else "no"}{" (" + escape(group) + ")" if group else ""}</td>'
            f'<td>{_verdict_html(v)}{" <span class=tag>disagrees</span>" if is_dis else ""}</td>'
            f'<td>{escape(note.value) if note else ""}'
            f'{"<br><small>" + escape(note.user) + ", " + escape(note.at[:19]) + "</small>" if note else ""}</td></tr>')
    more = f"<p>{hidden} more flagged images are not shown (see the export's results.csv).</p>" if hidden else ""
    legend_maps = (f'<p class="legend">Heat maps on one scale for the images below (transparent at the low end):'
                   f"</p>{colorbar_svg(lo, hi)}" if present else "")
    images_html = legend_maps + ("<table><tr><th>image / heat map</th><th>path</th><th>score</th><th>flagged</th><th>verdict</th>"
                   f"<th>note</th></tr>{''.join(items)}</table>{more}" if items else "<p>No flagged or disagreeing images.</p>")

    # ---------------------------------------------------------------- provenance
    t = info.threshold
    kept = session.model(info.fingerprint)
    prov = [
        ("detector", info.detector),
        ("model fingerprint", info.fingerprint),
        ("model kept", "–" if kept is None else f"{kept.path} (weights SHA-256 {kept.weights_sha256}; trained on "
                                                f"{kept.good_folder or 'good images not recorded'})"),
        ("settings", json.dumps(info.settings, sort_keys=True)),
        ("threshold (run)", t.describe() if t is not None else "none (zero-shot: grouped)"),
        ("threshold (now)", "–" if thr_value is None else f"{thr_value:.6g}"),
        ("review band", "–" if band is None else f"pass ≤ {band.low:.6g}, fail > {band.high:.6g}"),
        ("grouping", result.grouping.describe() if result.grouping is not None else (result.grouping_note or "–")),
        ("run", f"{info.id} of {len(session.runs())}: {info.n_new} new, {info.n_reused} reused, "
                f"{info.seconds:.1f} s"),
        ("run by", f"{info.user}, {info.started_at} – {info.finished_at}"),
        ("app version (run)", info.app_version),
        ("session", f"{session.path} (folder {session.folder})"),
        ("report", f"{now()} by {session.user}, app version {app_version()}"),
    ]
    history = session.threshold_history(info.id)
    if history:
        prov.append(("threshold changes", "; ".join(
            f"{h['at'][:19]} {h['user']}: {h['reason']} (threshold {h['value']}, band {h['band_low']}–{h['band_high']})"
            for h in history)))
    prov_html = "".join(f"<tr><th>{escape(k)}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in prov)
    skipped_html = ""
    if result.skipped:
        skipped_html = ("<h2>Skipped files</h2><table><tr><th>path</th><th>reason</th></tr>" + "".join(
            f"<tr><td class='mono'>{escape(str(s.path))}</td><td>{escape(s.reason)}</td></tr>" for s in result.skipped)
            + "</table>")

    folder = escape(str(session.folder or session.path))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Inspection report – {folder}</title>
<style>{CSS}</style></head><body>
<h1>Inspection report</h1>
<p class="sub">{folder} · {escape(info.detector)} · run {info.id} · {escape(info.finished_at[:19])} UTC</p>
<h2>Summary</h2><div class="cards">{card_html}</div>
<p>{escape(status.describe())}.</p>
<h2>Score histogram</h2>{hist}{legend}
<h2>ROC from the verdicts</h2>{roc_html}
<h2>Flagged and disagreeing images</h2>{images_html}
<h2>Provenance</h2><table>{prov_html}</table>
{skipped_html}
</body></html>
"""


def write_report(session: Session, out: str | os.PathLike, run_id: Optional[int] = None,
                 max_images: int = MAX_IMAGES) -> Path:
    """Write :func:`build_report` to ``out`` atomically and return the path."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = build_report(session, run_id, max_images)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target
