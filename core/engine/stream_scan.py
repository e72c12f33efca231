"""A streamed ``scan``: memory flat in the number of images, decoding ahead of the model, resumable.

:func:`stream_scan` is how :func:`core.engine.scan_run.scan_to_folder` scores a trained
detector's folder:

- **Decoding ahead.** :func:`prefetch` reads the images with ``workers`` threads (OpenCV and
  Pillow release the GIL while they decode) a bounded window ahead of the model, so decoding
  overlaps with scoring and at most ``window`` decoded images wait in memory.
- **Written as they come.** Each batch's rows are appended to ``results.csv`` and
  ``flagged.txt`` and flushed (:class:`core.io.export.ResultsAppender`); a row's map goes to
  :class:`core.io.map_store.MapStore` on disk and is not kept in memory. Rows are written in
  listing order. The heat-map PNGs are coloured at the end, one map at a time, on the
  batch-wide scale the store has accumulated (why a store and not a fixed scale: see
  :mod:`core.io.map_store`), so ``heatmap_scale.json`` stays what it was.
- **What stays in memory** grows only with the listing (the paths, which the folder listing
  holds anyway, and one byte per image for "done") and with the skipped files, never with the
  maps or the rows.
- **Resume.** An interrupted run keeps its map store (``OUT/.maps``) and records a fingerprint
  of the model in its run marker (:func:`run_fingerprint`: the weights' checksum, the score
  settings and the threshold). A scan into the same ``--out`` with the same fingerprint takes
  over the rows, the skipped files and the maps already done (:func:`read_partial`) and scores
  only the rest, so the result is the one an uninterrupted scan writes. Rows of another model
  are never mixed in: a different fingerprint starts afresh. What is taken over is checked
  first: each row and skip must be in the run's journal as written (:mod:`core.io.journal`),
  its score a number and its flag the one the threshold gives, its raw map intact (a digest
  per map record); anything else (an edited cell, a deleted or damaged ``.maps``) is scored
  again, and the resume says how many.

Zero-shot detectors keep the in-memory path (:func:`core.engine.workflows.scan_images`): the
split into normal and suspect groups needs every score of the batch before any row's
``flagged`` is known. So does a scan into a session (``--session``), which reuses stored scores.

Scoring itself is pluggable: ``events`` yields ``(index, ScoreResult | Skipped)`` in increasing
index order; :func:`local_events` is the local one (decode ahead, batches, the detector's
own ``score``); the Ray engine (:mod:`core.engine.ray_scan`) gives the same events.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from core.data.images import ImageReadError, Skipped, read_image, read_image_for
from core.data.listing import RUN_MARKER
from core.detectors.base import Detector
from core.engine.session_scan import model_fingerprint, score_settings
from core.io import export as _export  # its functions looked up at call time (tests patch them)
from core.io.export import (
    HEATMAP_DIR,
    RESULTS_NAME,
    SKIPPED_NAME,
    ResultsAppender,
    csv_text,
    csv_text_raw,
    display_path,
    heatmap_names_for,
    skipped_cells,
)
from core.io.journal import JOURNAL_NAME, ROW, SKIP, Journal, digest, read_journal
from core.io.map_store import STORE_NAME, MapStore
from core.results import ScoreResult, make_row, score_error
from core.results.threshold import Threshold
from core.runtime.cancel import Cancelled, CancelToken, check
from core.runtime.progress import ProgressFn

NOT_SCORED = "not scored: the scan was interrupted"
SKIP_COLUMNS = ("path", "reason")
Event = tuple[int, Union[ScoreResult, Skipped]]


def default_workers() -> int:
    """Decoding threads when ``--workers`` is not given: the cores, at most 4 (decoding small
    images saturates the model well before that)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_fingerprint(detector: Detector, threshold: Optional[Threshold], heatmaps: bool) -> str:
    """What must be equal for two runs' rows to belong in one results table: the weights
    (:func:`~core.engine.session_scan.model_fingerprint`, the same for a saved model and the
    one trained in this process), the settings that change a score, the threshold, and
    whether heat maps are written."""
    doc = {"model": model_fingerprint(detector), "settings": score_settings(detector),
           "threshold": None if threshold is None else float(threshold.value), "heatmaps": bool(heatmaps)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- decoding ahead
def _read(path: Path, max_side: int | None = None):
    try:
        return read_image_for(path, max_side) if max_side is not None else read_image(path)
    except ImageReadError as exc:
        return Skipped(path, str(exc))


def prefetch(paths: Sequence[Path], workers: int, window: int,
             cancel: CancelToken | None = None, max_side: int | None = None) -> Iterator[tuple[int, object]]:
    """``(position in paths, image | Skipped)`` in order, decoded by ``workers`` threads at
    most ``window`` images ahead of the consumer. With ``max_side`` (a detector's
    :meth:`~core.detectors.base.Detector.decode_side`) an image is ``(image, (H, W) of the
    file)``, a very large one decoded at reduced size; large decodes take turns within the
    process-wide decode budget (:func:`core.data.images.decode_budget`), so ``workers``
    threads never hold several huge images at once."""
    workers = max(1, int(workers))
    window = max(workers, int(window))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    pending: deque[tuple[int, Future]] = deque()
    nxt = 0
    try:
        while nxt < len(paths) or pending:
            while nxt < len(paths) and len(pending) < window:
                pending.append((nxt, pool.submit(_read, paths[nxt], max_side)))
                nxt += 1
            check(cancel)
            k, fut = pending.popleft()
            yield k, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def local_events(detector: Detector, paths: Sequence[Path], indices: Sequence[int], *, workers: int,
                 cancel: CancelToken | None = None) -> Iterator[Event]:
    """Score ``paths`` (listing ``indices``) in the detector's batches, decoding ahead; events
    in index order (a batch's unreadable files come out with it, in place). A call to the
    detector gets a batch for each of its scoring lanes (:meth:`~core.detectors.base.Detector.images_per_call`)."""
    bs = detector.images_per_call()
    chunk: list[tuple[int, object]] = []
    n_images = 0
    side = detector.decode_side()

    def flush() -> Iterator[Event]:
        decoded = [x for _, x in chunk if not isinstance(x, Skipped)]
        images = [x[0] if side is not None else x for x in decoded]
        results = iter(detector.score(images, cancel=cancel).values()) if images else iter(())
        for idx, x in chunk:
            if isinstance(x, Skipped):
                yield idx, x
                continue
            res = next(results)
            if side is not None:
                res.image_shape = x[1]  # decoded smaller: the heat map is still the file's size
            yield idx, res

    for k, x in prefetch(paths, workers, window=max(2 * bs, 4 * workers), cancel=cancel, max_side=side):
        chunk.append((indices[k], x))
        n_images += not isinstance(x, Skipped)
        if n_images >= bs:
            yield from flush()
            chunk, n_images = [], 0
    if chunk:
        yield from flush()


# ----------------------------------------------------------------------------- resume
@dataclass
class Partial:
    """What an interrupted run into ``--out`` already did, by listing index, as far as it passes
    its checks (:func:`read_partial`)."""

    header: list[str]
    rows: dict[int, dict[str, str]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    maps: Path | None = None
    dropped: int = 0  # rows of files no longer in the listing
    #: this run's listing index -> the index the row had in the interrupted run (its map's key)
    old_index: dict[int, int] = field(default_factory=dict)
    #: rows and skips of the interrupted run that failed their check, and why (scored again)
    rejected: dict[str, int] = field(default_factory=dict)

    def describe_rejected(self) -> str:
        """"" or "4 failed their check and are scored again (2 edited or not journaled, ...)"."""
        n = sum(self.rejected.values())
        if not n:
            return ""
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        return f"{n} failed their check and are scored again ({why})"


def partial_marker(out: Path) -> dict | None:
    """The run marker of ``out`` when it holds an interrupted, resumable run, else None."""
    try:
        marker = json.loads((out / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("complete") is not False or not marker.get("fingerprint"):
        return None
    return marker


def run_marker_readable(out: Path) -> bool:
    """Whether ``out``'s run marker is one a scan wrote (JSON with a ``complete`` flag)."""
    try:
        marker = json.loads((out / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and isinstance(marker.get("complete"), bool)


def _row_problem(rec: dict, header: list[str], threshold: Optional[Threshold]) -> str:
    """Why a row read back from an interrupted run's results.csv cannot be taken over ("" if it can)."""
    if None in rec or any(rec.get(k) is None for k in header):
        return "a malformed row"
    try:
        score = float(rec["score"])
    except (KeyError, ValueError):
        return "a score that is not a number"
    if not math.isfinite(score):
        return "a score that is not a number"
    flagged = "" if threshold is None else ("true" if threshold.flags(score) else "false")
    if rec.get("flagged") != flagged:
        return "a flag that does not follow its score"
    return ""


def read_partial(out: Path, images: Sequence[Path], threshold: Optional[Threshold] = None,
                 heatmaps: bool = True) -> Partial:
    """The rows and skipped files of the interrupted run in ``out``, keyed by their index in
    ``images`` (matched by the path as written), that pass their checks: the row or skip is in
    the run's journal as written (:mod:`core.io.journal`), its score is a number and its flag
    follows it under ``threshold``, and its heat map (``heatmaps``) is in the map store intact.
    Everything else is left out, counted in :attr:`Partial.rejected`, and scored again."""
    where = {csv_text(display_path(p)): i for i, p in enumerate(images)}
    journal = read_journal(out / JOURNAL_NAME)
    maps = MapStore.valid(out / STORE_NAME) if heatmaps else {}

    def reject(why: str) -> None:
        part.rejected[why] = part.rejected.get(why, 0) + 1

    with open(out / RESULTS_NAME, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        part = Partial(header=list(reader.fieldnames or []))
        for rec in reader:
            i = where.get(rec.get("path") or "")
            if i is None:
                part.dropped += 1
                continue
            why = _row_problem(rec, part.header, threshold)
            old = None if why else journal.get((ROW, digest(ROW, part.header, [rec[k] for k in part.header])))
            if not why and old is None:
                why = "edited or not in the journal"
            if not why and rec.get("heatmap") and old not in maps:
                why = "a heat map missing or damaged"
            if why or i in part.rows:
                reject(why or "a row repeated")
                continue
            part.rows[i] = rec
            part.old_index[i] = old
    if (out / SKIPPED_NAME).exists():
        with open(out / SKIPPED_NAME, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                path, reason = rec.get("path") or "", rec.get("reason") or ""
                i = where.get(path)
                if i is None or reason == NOT_SCORED or i in part.rows:
                    continue
                if (SKIP, digest(SKIP, SKIP_COLUMNS, [path, reason])) not in journal:
                    reject("skips edited or not in the journal")
                    continue
                part.skipped[i] = csv_text_raw(reason)
    part.maps = out / STORE_NAME
    return part


# ----------------------------------------------------------------------------- the scan
@dataclass
class StreamResult:
    scored: int
    flagged: int
    skipped: list[Skipped]  # bad files and, when interrupted, the images not reached
    interrupted: bool
    seconds: float
    resumed: int = 0  # rows taken over from an interrupted run
    #: Colours the heat maps once scoring is over (call it with signals deferred); None if no maps.
    colour: Optional[Callable[[], int]] = None
    store: Optional[MapStore] = None
    #: Digests of the rows and skips written, for a resume; removed once the run is complete.
    journal: Optional[Journal] = None


def stream_scan(
    detector: Detector,
    images: Sequence[Path],
    folder: Path,
    *,
    threshold: Optional[Threshold] = None,
    heatmaps: bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    partial: Partial | None = None,
    events: Callable[[Sequence[Path], Sequence[int]], Iterable[Event]] | None = None,
) -> StreamResult:
    """Score ``images`` into ``folder`` (``results.csv``, ``flagged.txt`` and ``skipped.csv``
    written; heat maps by :attr:`StreamResult.colour`). See the module docstring."""
    t0 = time.perf_counter()
    thr = threshold if threshold is not None else detector.threshold
    n = len(images)
    done = bytearray(n)
    skipped: dict[int, str] = {}
    names = heatmap_names_for(list(images)) if heatmaps else []
    store = MapStore(folder / STORE_NAME) if heatmaps else None
    journal = Journal(folder / JOURNAL_NAME)
    out = ResultsAppender(folder, heatmaps, header=partial.header if partial and partial.rows else None)
    prior = dict(partial.rows) if partial else {}
    resumed = 0
    if partial is not None:
        if store is not None and partial.maps is not None:
            taken = store.adopt(partial.maps, keep={old: i for i, old in partial.old_index.items() if i in prior})
            for i in [i for i, rec in prior.items() if rec.get("heatmap") and i not in taken]:
                del prior[i]  # its map went missing since read_partial looked: scored again
        for i, reason in partial.skipped.items():
            skipped[i], done[i] = reason, 1
            journal.add(i, SKIP, SKIP_COLUMNS, skipped_cells(Skipped(images[i], reason)))
        for i in prior:
            done[i] = 1
    prior_order = sorted(prior)
    pos = 0  # next prior row to write

    def carry_until(limit: int) -> None:
        nonlocal pos, resumed
        while pos < len(prior_order) and prior_order[pos] < limit:
            i = prior_order[pos]
            rec = dict(prior[i])
            if "heatmap" in rec and rec["heatmap"]:
                rec["heatmap"] = f"{HEATMAP_DIR}/{names[i]}"
            journal.add(i, ROW, out.header or list(rec), out.add_fields(rec))
            pos += 1
            resumed += 1

    todo = [i for i in range(n) if not done[i]]
    make_events = events or (lambda paths, idx: local_events(detector, paths, idx, workers=workers or default_workers(),
                                                             cancel=cancel))
    interrupted = False
    finished = sum(done)
    if progress:
        progress(finished, n, "scoring")
    try:
        for i, ev in make_events([images[i] for i in todo], todo):
            carry_until(i)
            if isinstance(ev, Skipped) or not math.isfinite(ev.score):  # a NaN score: never "not flagged"
                skipped[i] = ev.reason if isinstance(ev, Skipped) else score_error(ev.score)
                journal.add(i, SKIP, SKIP_COLUMNS, skipped_cells(Skipped(images[i], skipped[i])))
            else:
                row = make_row(images[i], ev, ev.image_shape, thr)
                if store is not None and row.anomaly_map is not None:
                    store.add(i, row.anomaly_map, row.image_shape)
                cells = out.add(row, f"{HEATMAP_DIR}/{names[i]}" if heatmaps else "")
                journal.add(i, ROW, out.header or [], cells)
            done[i] = 1
            finished += 1
            if finished % 16 == 0 or finished == n:
                out.flush()
                if store is not None:
                    store.flush()
                journal.flush()  # after the rows: a row without its record is scored again, never trusted
                if progress:
                    progress(finished, n, f"scored {out.rows} of {n}")
    except Cancelled:
        interrupted = True
    carry_until(n)
    out.close()
    journal.close()
    if progress and not interrupted:
        progress(n, n, f"scored {out.rows} of {n}")
    bad = [Skipped(images[i], skipped[i]) for i in sorted(skipped)]
    unscored = [Skipped(images[i], NOT_SCORED) for i in range(n) if not done[i]]

    colour = None
    if store is not None and len(store):
        def colour() -> int:
            lo, hi = store.scale()
            hm = folder / HEATMAP_DIR
            hm.mkdir(exist_ok=True)
            k = 0
            for i, m, shape in store.items():
                _export.write_heatmap(hm, names[i], m, shape, lo, hi)
                k += 1
            _export.write_scale(folder, lo, hi)
            return k
    elif store is not None:
        store.remove()
    return StreamResult(out.rows, out.flagged, bad + unscored, interrupted, time.perf_counter() - t0, resumed,
                        colour, store, journal)

