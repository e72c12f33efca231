"""One self-contained HTML report of a session's run: nothing but the file is needed to read it.

It holds the summary counts, the score histogram with the threshold and the review band, the
ROC of the inspector's own verdicts (when there are OK and NG verdicts), the flagged and the
disagreeing images with their heat-map overlays and notes (images embedded as JPEG data URIs),
and the provenance: detector, model fingerprint, settings, threshold and how it was calibrated
and changed, who ran it and when, the app version and the session file.

Plain HTML and inline SVG (:mod:`.svg`) written with the standard library: a template engine
would add a dependency for one page, and pyqtgraph is not allowed in the engine.

A session file is untrusted input (it may come from another machine): an image is embedded only
if it lies inside the session's folder and its content is still the one that was scanned (the
stored SHA-256); otherwise the row says why ("changed since the scan", "missing", "outside the
session's folder") and shows the stored heat map alone. Bidirectional-text controls (U+202E
and its kin, which can make ``gnp.exe`` read as ``exe.png``) are shown as visible marks such
as ``⟨U+202E⟩`` in every name, note and reason. ``redact=True`` makes a report meant to leave
the building: image paths relative to the inspected folder, the folder and the session file by
their names only, user names replaced by "inspector 1", "inspector 2"…, no path in the
settings.
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
from core.io.export import display_path
from core.metrics import image_auroc
from core.results import ScanRow
from core.session.identity import app_version, file_sha256, now
from core.session.store import Session, SessionError
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


def _inside(path: Path, folder: Optional[Path]) -> bool:
    """Whether ``path``, links followed, lies inside ``folder`` (links followed too)."""
    if folder is None:
        return False
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def _same_content(path: Path, sha: str) -> bool:
    try:
        return file_sha256(path) == sha
    except OSError:
        return False


def _thumbnail(path: Path, sha: str, folder: Optional[Path]) -> tuple[Optional[np.ndarray], str]:
    """The image as scanned, or None and why it is not shown."""
    if not _inside(path, folder):
        return None, "image not embedded: it lies outside the session's folder"
    if not path.exists():
        return None, "image not readable here (missing)"
    if not _same_content(path, sha):
        return None, "image changed since it was scanned (its content differs): the score and heat map are the earlier file's"
    try:
        img = read_thumbnail(path, THUMB)
    except (ImageReadError, OSError) as exc:
        return None, f"image not readable here ({exc})"
    if not _same_content(path, sha):  # replaced while it was being read
        return None, "image changed since it was scanned (its content differs): the score and heat map are the earlier file's"
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


#: Bidirectional-text controls: shown as visible marks, never obeyed (they can reverse a name).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: str) -> str:
    """``text`` with every bidirectional control written as ``⟨U+202E⟩``."""
    return "".join(f"\u27e8U+{ord(c):04X}\u27e9" if c in BIDI_CONTROLS else c for c in text)


def _h(text) -> str:
    """Any text as HTML: bidi controls made visible, then escaped."""
    return escape(visible(str(text)))


class _Shown:
    """How paths and people appear: as they are, or redacted (see the module docstring)."""

    def __init__(self, session: Session, redact: bool) -> None:
        self.redact = redact
        self.folder = session.folder
        self._names: dict[str, str] = {}

    def path(self, path) -> str:
        p = Path(path)
        if self.redact:
            try:
                p = Path(os.path.realpath(p)).relative_to(os.path.realpath(self.folder)) if self.folder else Path(p.name)
            except ValueError:
                p = Path(p.name)
        return _h(display_path(p))

    def place(self, path) -> str:
        """The folder or the session file: by its name only when redacted."""
        if path is None:
            return "–"
        return _h(display_path(Path(path).name if self.redact else path))

    def user(self, name: str) -> str:
        if not self.redact:
            return _h(name)
        return _h(self._names.setdefault(name, f"inspector {len(self._names) + 1}"))

    def settings(self, settings: dict) -> str:
        if self.redact:  # a weights file or a local model folder must not tell where it lives
            settings = {k: Path(v).name if isinstance(v, str) and ("/" in v or "\\" in v) else v
                        for k, v in settings.items()}
        return _h(json.dumps(settings, sort_keys=True))


def _verdict_html(v: Optional[str]) -> str:
    return f'<span class="v-{v}">{v.upper()}</span>' if v else '<span style="color:#999">–</span>'


def build_report(session: Session, run_id: Optional[int] = None, max_images: int = MAX_IMAGES,
                 redact: bool = False) -> str:
    """The report's HTML text for ``run_id`` (default: the latest run); ``redact`` for a report
    meant to leave the building (see the module docstring)."""
    shown = _Shown(session, redact)
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
    sources = session.result_sources(info.id)
    maps: dict[int, Optional[np.ndarray]] = {}
    damaged: set[int] = set()
    for r, _ in chosen:
        try:
            sha, src = sources[r.path]
            maps[id(r)] = session.stored_map(src, sha)
        except SessionError:  # a damaged or oversized blob: the row says so, the report goes on
            maps[id(r)] = None
            damaged.add(id(r))
    present = [m.astype(np.float32) for m in maps.values() if m is not None]
    lo, hi = robust_range(present) if present else (0.0, 1.0)
    items = []
    for r, is_dis in chosen:
        img, why = _thumbnail(r.path, sources[r.path][0], session.folder)
        if id(r) in damaged:
            why = (why + "; " if why else "") + "heat map damaged in the session file"
        over = _overlay(img, maps[id(r)], lo, hi, r.image_shape)
        pics = "".join(f'<img src="{_data_uri(a)}" alt="{escape(alt)}">' for a, alt in ((img, "image"), (over, "heat map"))
                       if a is not None)
        note = notes.get(r.path)
        v = verdicts.get(r.path)
        group = r.columns.get("group", "")
        items.append(
            f'<tr class="{"dis" if is_dis else ""}"><td><div class="img">{pics}</div>{_h(why)}</td>'
            f'<td class="mono">{shown.path(r.path)}</td><td>{r.score:.5g}</td>'
            f'<td>{"yes" if status.flags[str(r.path)] else "no"}{" (" + _h(group) + ")" if group else ""}</td>'
            f'<td>{_verdict_html(v)}{" <span class=tag>disagrees</span>" if is_dis else ""}</td>'
            f'<td>{_h(note.value) if note else ""}'
            f'{"<br><small>" + shown.user(note.user) + ", " + _h(note.at[:19]) + "</small>" if note else ""}</td></tr>')
    more = f"<p>{hidden} more flagged images are not shown (see the export's results.csv).</p>" if hidden else ""
    legend_maps = (f'<p class="legend">Heat maps on one scale for the images below (transparent at the low end):'
                   f"</p>{colorbar_svg(lo, hi)}" if present else "")
    images_html = legend_maps + ("<table><tr><th>image / heat map</th><th>path</th><th>score</th><th>flagged</th><th>verdict</th>"
                   f"<th>note</th></tr>{''.join(items)}</table>{more}" if items else "<p>No flagged or disagreeing images.</p>")

    # ---------------------------------------------------------------- provenance
    t = info.threshold
    kept = session.model(info.fingerprint)
    prov = [
        ("detector", _h(info.detector)),
        ("model fingerprint", _h(info.fingerprint)),
        ("model kept", "–" if kept is None else f"{shown.path(kept.path)} (weights SHA-256 {_h(kept.weights_sha256)}; "
                                                 f"trained on {shown.path(kept.good_folder) if kept.good_folder else 'good images not recorded'})"),
        ("settings", shown.settings(info.settings)),
        ("threshold (run)", _h(t.describe() if t is not None else "none (zero-shot: grouped)")),
        ("threshold (now)", "–" if thr_value is None else f"{thr_value:.6g}"),
        ("review band", "–" if band is None else _h(f"pass ≤ {band.low:.6g}, fail > {band.high:.6g}")),
        ("grouping", _h(result.grouping.describe() if result.grouping is not None else (result.grouping_note or "–"))),
        ("run", _h(f"{info.id} of {len(session.runs())}: {info.n_new} new, {info.n_reused} reused, "
                   f"{info.seconds:.1f} s")),
        ("run by", f"{shown.user(info.user)}, {_h(info.started_at)} – {_h(info.finished_at)}"),
        ("app version (run)", _h(info.app_version)),
        ("session", f"{shown.place(session.path)} (folder {shown.place(session.folder)})"),
        ("report", f"{_h(now())} by {shown.user(session.user)}, app version {_h(app_version())}"
                   + (" (redacted: paths relative to the folder, user names replaced)" if redact else "")),
    ]
    history = session.threshold_history(info.id)
    if history:
        prov.append(("threshold changes", "; ".join(
            f"{_h(h['at'][:19])} {shown.user(h['user'])}: {_h(h['reason'])} (threshold {_h(h['value'])}, "
            f"band {_h(h['band_low'])}–{_h(h['band_high'])})" for h in history)))
    prov_html = "".join(f"<tr><th>{escape(k)}</th><td class='mono'>{v}</td></tr>" for k, v in prov)
    skipped_html = ""
    if result.skipped:
        skipped_html = ("<h2>Skipped files</h2><table><tr><th>path</th><th>reason</th></tr>" + "".join(
            f"<tr><td class='mono'>{shown.path(s.path)}</td><td>{_h(s.reason)}</td></tr>" for s in result.skipped)
            + "</table>")

    folder = shown.place(session.folder or session.path)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Inspection report – {folder}</title>
<style>{CSS}</style></head><body>
<h1>Inspection report</h1>
<p class="sub">{folder} · {_h(info.detector)} · run {info.id} · {_h(info.finished_at[:19])} UTC</p>
<h2>Summary</h2><div class="cards">{card_html}</div>
<p>{_h(status.describe())}.</p>
<h2>Score histogram</h2>{hist}{legend}
<h2>ROC from the verdicts</h2>{roc_html}
<h2>Flagged and disagreeing images</h2>{images_html}
<h2>Provenance</h2><table>{prov_html}</table>
{skipped_html}
</body></html>
"""


def write_report(session: Session, out: str | os.PathLike, run_id: Optional[int] = None,
                 max_images: int = MAX_IMAGES, redact: bool = False) -> Path:
    """Write :func:`build_report` to ``out`` atomically and return the path (a symbolic link is
    written through: the file it points to is replaced, the link stays)."""
    target = Path(out)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    text = build_report(session, run_id, max_images, redact)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target
