"""Small inline-SVG charts for the HTML report: a score histogram with thresholds, and an ROC curve.

Written by hand (a few dozen elements each) rather than with a plotting library: the report
stays one self-contained file with crisp, searchable text, and the engine gains no dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Optional

import numpy as np

W, H = 640, 300
PAD_L, PAD_R, PAD_T, PAD_B = 48, 16, 16, 76


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _axes(x0: float, x1: float, y1: float, xlabel: str, ylabel: str, yticks: Sequence[float],
          label=_fmt) -> list[str]:
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    out = [f'<line x1="{PAD_L}" y1="{PAD_T + ph}" x2="{PAD_L + pw}" y2="{PAD_T + ph}" stroke="#444"/>',
           f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + ph}" stroke="#444"/>']
    for t in np.linspace(x0, x1, 5):
        x = PAD_L + (t - x0) / (x1 - x0) * pw
        out.append(f'<line x1="{x:.1f}" y1="{PAD_T + ph}" x2="{x:.1f}" y2="{PAD_T + ph + 4}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 16}" text-anchor="middle">{label(t)}</text>')
    for t in yticks:
        y = PAD_T + ph - (t / y1 if y1 else 0) * ph
        out.append(f'<line x1="{PAD_L - 4}" y1="{y:.1f}" x2="{PAD_L}" y2="{y:.1f}" stroke="#444"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{PAD_L + pw / 2}" y="{H - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{PAD_T + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {PAD_T + ph / 2})">{escape(ylabel)}</text>')
    return out


def _svg(body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'font-family="sans-serif" font-size="11"><title>{escape(title)}</title>{"".join(body)}</svg>')


def _scale(s: np.ndarray):
    """A linear axis, or a log one (from the lowest score) when the scores bunch up at the low end:
    more than a quarter of them in the lowest 5 % of the range, as when a few defects score far
    above the normal images and would crush them, the threshold and the band into one bar.
    f(v) = sign(v - m) * log10(1 + |v - m| / c) with m the lowest score and c the spread of the
    lowest quarter."""
    m = float(s.min())
    span = float(s.max()) - m
    crowded = span > 0 and float(np.mean(s <= m + 0.05 * span)) > 0.25
    c = float(np.percentile(s, 25)) - m
    if crowded and c > 0:

        def f(v):
            v = np.asarray(v, dtype=np.float64) - m
            return np.sign(v) * np.log10(1.0 + np.abs(v) / c)

        def inv(u):
            u = np.asarray(u, dtype=np.float64)
            return m + np.sign(u) * c * (10.0 ** np.abs(u) - 1.0)

        return f, inv, "anomaly score (log scale)"
    return (lambda v: np.asarray(v, dtype=np.float64)), (lambda u: np.asarray(u, dtype=np.float64)), "anomaly score"


def histogram_svg(scores: Sequence[float], threshold: Optional[float] = None,
                  band: Optional[tuple[float, float]] = None, marks: Optional[dict[str, Sequence[float]]] = None,
                  bins: int = 40) -> str:
    """Histogram of ``scores`` with the threshold (solid red), the review band (shaded, dashed
    edges) and, below the axis, tick marks of verdict scores (``marks``: {"ng": [...], "ok": [...]})."""
    s = np.asarray([x for x in scores if np.isfinite(x)], dtype=np.float64)
    if s.size == 0:
        return _svg([f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no scores</text>'], "score histogram")
    f, inv, xlabel = _scale(s)
    extra = [float(f(v)) for v in (threshold, *(band or ())) if v is not None and np.isfinite(v)]
    t = f(s)
    lo, hi = float(min([t.min(), *extra])), float(max([t.max(), *extra]))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    lo, hi = lo - 0.02 * span, hi + 0.02 * span
    counts, edges = np.histogram(t, bins=bins, range=(lo, hi))
    ymax = max(1, int(counts.max()))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def X(v: float) -> float:  # a score -> x pixel
        return PAD_L + (float(f(v)) - lo) / (hi - lo) * pw

    def XT(u: float) -> float:  # an axis position -> x pixel
        return PAD_L + (u - lo) / (hi - lo) * pw

    body: list[str] = []
    if band is not None:
        body.append(f'<rect x="{X(band[0]):.1f}" y="{PAD_T}" width="{max(0.0, X(band[1]) - X(band[0])):.1f}" '
                    f'height="{ph}" fill="#f5b041" fill-opacity="0.22"><title>review band {_fmt(band[0])} – '
                    f'{_fmt(band[1])}</title></rect>')
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            h = c / ymax * ph
            body.append(f'<rect x="{XT(a) + 0.5:.1f}" y="{PAD_T + ph - h:.1f}" width="{max(0.5, XT(b) - XT(a) - 1):.1f}" '
                        f'height="{h:.1f}" fill="#5d6d7e"><title>{c} images, score {_fmt(float(inv(a)))} – '
                        f'{_fmt(float(inv(b)))}</title></rect>')
    colours = {"ng": "#c0392b", "ok": "#1e8449", "unsure": "#7d3c98"}
    for k, (name, vals) in enumerate((marks or {}).items()):
        y = PAD_T + ph + 28 + 10 * k
        body.append(f'<text x="{PAD_L - 6}" y="{y + 4}" text-anchor="end" font-size="9" '
                    f'fill="{colours.get(name, "#000")}">{escape(name.upper())}</text>')
        for v in vals:
            body.append(f'<line x1="{X(v):.1f}" y1="{y - 3}" x2="{X(v):.1f}" y2="{y + 3}" '
                        f'stroke="{colours.get(name, "#000")}" stroke-width="1.5"/>')
    body += _axes(lo, hi, ymax, xlabel, "images", [0, ymax / 2, ymax], label=lambda u: _fmt(float(inv(u))))
    if band is not None:
        for k, (v, label) in enumerate(((band[0], "pass ≤"), (band[1], "fail >"))):
            body.append(f'<line x1="{X(v):.1f}" y1="{PAD_T}" x2="{X(v):.1f}" y2="{PAD_T + ph}" stroke="#d68910" '
                        f'stroke-dasharray="5 3" stroke-width="1.5"/>')
            body.append(f'<text x="{X(v) + 3:.1f}" y="{PAD_T + 26 + 14 * k}" fill="#9c640c">{label} {_fmt(v)}</text>')
    if threshold is not None:
        body.append(f'<line x1="{X(threshold):.1f}" y1="{PAD_T}" x2="{X(threshold):.1f}" y2="{PAD_T + ph}" '
                    f'stroke="#c0392b" stroke-width="2"/>')
        body.append(f'<text x="{X(threshold) + 3:.1f}" y="{PAD_T + 10}" fill="#c0392b">threshold {_fmt(threshold)}</text>')
    return _svg(body, "score histogram")


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds) of flagging ``score > t``; labels 1 = defective."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tp = np.cumsum(y)[distinct]
    fp = (1 + distinct) - tp
    pos, neg = max(1, int(y.sum())), max(1, int(y.size - y.sum()))
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, s[distinct]]


def roc_svg(labels: Sequence[int], scores: Sequence[float], threshold: Optional[float] = None,
            auroc: Optional[float] = None) -> str:
    """ROC of the inspector's verdicts (1 = NG) against the scores, with the threshold's operating point."""
    fpr, tpr, _ = roc_points(labels, scores)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def P(x: float, y: float) -> str:
        return f"{PAD_L + x * pw:.1f},{PAD_T + ph - y * ph:.1f}"

    body = [f'<polyline points="{P(0, 0)} {P(1, 1)}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>',
            f'<polyline points="{" ".join(P(a, b) for a, b in zip(fpr, tpr))}" fill="none" stroke="#2471a3" '
            'stroke-width="2"/>']
    body += _axes(0.0, 1.0, 1.0, "false-positive rate (verdict OK, flagged)", "true-positive rate", [0, 0.5, 1])
    if threshold is not None:
        y = np.asarray(labels)
        s = np.asarray(scores, dtype=np.float64)
        fx = float(np.mean(s[y == 0] > threshold)) if np.any(y == 0) else 0.0
        ty = float(np.mean(s[y == 1] > threshold)) if np.any(y == 1) else 0.0
        x, yy = P(fx, ty).split(",")
        body.append(f'<circle cx="{x}" cy="{yy}" r="5" fill="#c0392b"><title>threshold {_fmt(threshold)}: '
                    f'TPR {ty:.3f}, FPR {fx:.3f}</title></circle>')
        body.append(f'<text x="{float(x) + 8:.1f}" y="{float(yy) + 14:.1f}" fill="#c0392b">threshold</text>')
    if auroc is not None:
        body.append(f'<text x="{PAD_L + pw - 4}" y="{PAD_T + ph - 8}" text-anchor="end">AUROC {auroc:.3f}</text>')
    return _svg(body, "ROC from the inspector's verdicts")


def colorbar_svg(lo: float, hi: float, width: int = 260, stops: int = 16) -> str:
    """The heat maps' colour scale as a horizontal bar, ``lo`` to ``hi`` in map values."""
    from core.io.colormap import lut

    colors = lut()[np.linspace(0, 255, stops).round().astype(int)]
    grad = "".join(f'<stop offset="{i / (stops - 1):.3f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
                   for i, (r, g, b) in enumerate(colors))
    return (f'<svg class="colorbar" width="{width + 120}" height="34" xmlns="http://www.w3.org/2000/svg" '
            f'font-family="sans-serif" font-size="11"><title>heat-map colour scale</title>'
            f'<defs><linearGradient id="heat">{grad}</linearGradient></defs>'
            f'<text x="0" y="15">map value</text><rect x="62" y="4" width="{width}" height="14" fill="url(#heat)" '
            f'stroke="#888"/><text x="62" y="31">{_fmt(lo)}</text>'
            f'<text x="{62 + width}" y="31" text-anchor="end">{_fmt(hi)}</text></svg>')
