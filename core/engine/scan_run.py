"""``scan`` from a folder into an output folder, with the output rules of :mod:`core.io.run_folder`.

:func:`scan_to_folder` lists the folder (:func:`core.data.listing.list_folder`, never its own
output), checks and locks ``out`` *before* the detector is trained or loaded, scores with
SIGINT/SIGTERM turned into a cancel request, writes everything into a fresh folder beside
``out`` and puts it in place when done:

- a complete run replaces ``out``;
- an interrupted scan writes the rows scored so far, lists every image it did not reach in
  ``skipped.csv`` ("not scored: the scan was interrupted"), and is marked incomplete
  (``INCOMPLETE.txt`` and the run marker);
- a signal while the results are being written lets the writing finish (a second one
  abandons it, leaving ``out`` as it was);
- a failure to write (a full disk) leaves ``out`` as it was and says so.

Every file the listing saw is in ``results.csv`` or ``skipped.csv`` (with broken links,
loops, unreadable folders and the masks of a dataset layout among the skipped, each with its
reason).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.data.images import ImageSource, Skipped
from core.data.listing import RUN_MARKER, Listing, list_folder
from core.detectors.base import Detector
from core.engine.stream_scan import (
    NOT_SCORED,
    partial_marker,
    read_partial,
    run_fingerprint,
    run_marker_readable,
    stream_scan,
)
from core.engine.workflows import scan_images
from core.io.export import display_path, export_scan, write_skipped
from core.io.run_folder import OutputFolderError, RunFolder  # noqa: F401 - raised from here
from core.results import ScanResult
from core.results.threshold import Threshold
from core.runtime.cancel import CancelToken
from core.runtime.progress import ProgressFn
from core.runtime.signals import cancel_on_signals, deferred_signals

__all__ = ["NOT_SCORED", "ExportError", "NoImagesError", "OutputFolderError", "ResumeError", "ScanOutcome",
           "list_for_scan", "scan_to_folder"]


class NoImagesError(ValueError):
    """The folder holds no image to scan; the message names it."""


class ExportError(RuntimeError):
    """The results could not be written; ``out`` was left as it was."""


class ResumeError(ValueError):
    """``resume=True`` but ``out`` holds no interrupted run of this model; the message says why."""


@dataclass
class ScanOutcome:
    result: ScanResult
    written: dict[str, Path]
    out: Path
    listing: Listing
    #: The name of the signal that stopped the scan ("SIGINT", "SIGTERM"), else "". A signal
    #: that came while the results were written is named here too, with a complete result.
    interrupted_by: str = ""
    #: Rows written and flagged (a streamed scan keeps no rows in ``result.rows``).
    scored: int = 0
    flagged: int = 0
    #: Rows taken over from an interrupted run in ``out`` (a resumed scan), else 0.
    resumed: int = 0


def list_for_scan(folder: Path, out: Path, *, recursive: bool = True, include: Sequence[str] = (),
                  exclude: Sequence[str] = ()) -> Listing:
    listing = list_folder(folder, recursive=recursive, include=include, exclude=exclude, skip=[out])
    if not listing.images and not listing.problems:
        raise NoImagesError(f"no image files (png, jpg, bmp, tif, webp) in {folder}"
                            + ("" if recursive else " (sub-folders were not searched: --no-recursive)")
                            + (f"; {listing.describe()}" if listing.describe() else ""))
    return listing


#: ``scan(detector, source, threshold, progress, cancel) -> ScanResult``: how the images are
#: scored; it must return the rows scored so far, marked ``interrupted``, when ``cancel`` is set.
ScanFn = Callable[[Detector, ImageSource, Optional[Threshold], Optional[ProgressFn], CancelToken], ScanResult]


def _plain_scan(detector: Detector, source: ImageSource, threshold: Optional[Threshold],
                progress: Optional[ProgressFn], cancel: CancelToken) -> ScanResult:
    return scan_images(detector, source, threshold=threshold, progress=progress, cancel=cancel, keep_partial=True)


def scan_to_folder(
    listing: Listing,
    out: Path,
    prepare: Callable[[], Detector],
    *,
    scan: ScanFn | None = None,
    threshold: Optional[Threshold] = None,
    heatmaps: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
    workers: int | None = None,
    resume: Optional[bool] = None,
    engine: Callable[[Detector, CancelToken], Callable] | None = None,
) -> ScanOutcome:
    """Scan ``listing.images`` with the detector ``prepare()`` returns (called once ``out``
    is checked and locked) and write the results to ``out``; see the module docstring.

    A trained detector's scan is streamed (:mod:`core.engine.stream_scan`: decoded ahead by
    ``workers`` threads, rows written as they come, memory flat, resumable); ``resume`` None
    continues an interrupted run of the same model found in ``out`` (a run of another model
    is replaced), True requires one (:class:`ResumeError` otherwise), False never resumes.
    ``engine(detector, cancel)`` gives the streamed scan's event source (the Ray engine); by default
    the images are scored here. ``scan`` replaces all that with an in-memory scoring
    function (a session scan reuses stored scores); zero-shot detectors always take the
    in-memory path, since grouping needs the whole batch.

    Raises :class:`~core.io.run_folder.OutputFolderError` (``out`` unusable, before any work)
    and :class:`ExportError`; ``KeyboardInterrupt`` after a second signal.
    """
    say = log or (lambda _m: None)
    with RunFolder(out, overwrite=overwrite, protect=[listing.root]) as run:
        detector = prepare()
        if scan is None and not detector.zero_shot:
            return _streamed(run, listing, out, detector, threshold=threshold, heatmaps=heatmaps, progress=progress,
                             say=say, workers=workers, resume=resume, engine=engine)
        if resume:
            raise ResumeError(f"cannot resume: only a plain scan with a trained detector is resumable "
                              f"({'a zero-shot detector groups the whole batch' if detector.zero_shot else 'a session scan reuses its own scores'})")
        scan = scan or _plain_scan
        source = ImageSource(listing.images)
        token = CancelToken()
        stopped: list[str] = []

        def on_signal(name: str) -> None:
            stopped.append(name)
            say(f"\n{name}: stopping; the images scored so far will be written to {out} "
                "(marked incomplete). Interrupt again to abandon.")

        with cancel_on_signals(token, on_signal):
            result = scan(detector, source, threshold, progress, token)
        seen = {str(r.path) for r in result.rows} | {str(s.path) for s in result.skipped}
        unscored = [Skipped(p, NOT_SCORED) for p in listing.images if str(p) not in seen] if result.interrupted else []
        result.skipped = [*listing.problems, *listing.masks_skipped(), *result.skipped, *unscored]
        complete = not result.interrupted
        with deferred_signals(lambda name: say(f"\n{name}: finishing writing the results to {out}; "
                                               "interrupt again to abandon (the folder is then left as it was)")) as late:
            try:
                assert run.temp is not None
                written = export_scan(run.temp, result, heatmaps=heatmaps)
                note = (f"Stopped by {stopped[0]} after {len(result.rows)} of {len(listing.images)} images; "
                        f"the {len(unscored)} not reached are listed in skipped.csv.") if not complete else ""
                run.commit(complete, info={"images": len(listing.images), "scored": len(result.rows),
                                           "skipped": len(result.skipped), "detector": result.detector}, note=note)
            except OSError as exc:
                raise _export_error(exc, out) from None
        written = {k: out / Path(v).name for k, v in written.items()}
    return ScanOutcome(result, written, out, listing, (stopped or late or [""])[0], scored=len(result.rows),
                       flagged=len(result.flagged))


def _export_error(exc: OSError, out: Path) -> ExportError:
    where = display_path(exc.filename) if getattr(exc, "filename", None) else str(out)
    return ExportError(f"cannot write the results ({exc.strerror or exc}: {where}); {out} was left as it was")


def _streamed(run: RunFolder, listing: Listing, out: Path, detector: Detector, *, threshold: Optional[Threshold],
              heatmaps: bool, progress: ProgressFn | None, say: Callable[[str], None], workers: int | None,
              resume: Optional[bool], engine: Callable[[Detector, CancelToken], Callable] | None) -> ScanOutcome:
    assert run.temp is not None
    thr = threshold if threshold is not None else detector.threshold
    fingerprint = run_fingerprint(detector, thr, heatmaps)
    marker = partial_marker(run.out)
    partial = None
    if marker is not None and marker.get("fingerprint") == fingerprint and resume is not False:
        try:
            partial = read_partial(run.out, listing.images, thr, heatmaps)
        except (OSError, ValueError, csv.Error) as exc:
            if resume:
                raise ResumeError(f"cannot resume from {out}: its results cannot be read ({exc})") from None
            say(f"not resuming {out}: its results cannot be read ({exc}); scanning afresh")
        else:
            say(f"resuming the interrupted run in {out}: {len(partial.rows)} images scored and "
                f"{len(partial.skipped)} skipped before are kept"
                + (f" ({partial.dropped} rows of files no longer listed are dropped)" if partial.dropped else "")
                + (f"; {partial.describe_rejected()}" if partial.rejected else ""))
    elif resume:
        why = ("it holds no run" if not (run.out / RUN_MARKER).exists() else
               "its run marker cannot be read (damaged or not written by a scan)" if not run_marker_readable(run.out)
               else "its run is complete" if marker is None else
               "its interrupted run is of another model, other score settings, threshold or heat-map choice")
        raise ResumeError(f"cannot resume {out}: {why}")
    elif marker is not None and resume is None:
        say(f"{out} holds an interrupted run of another model or other settings; it will be replaced, not continued")
    token = CancelToken()
    stopped: list[str] = []

    def on_signal(name: str) -> None:
        stopped.append(name)
        say(f"\n{name}: stopping; the images scored so far are kept in {out} "
            "(marked incomplete; run the same scan again to continue). Interrupt again to abandon.")

    try:
        with cancel_on_signals(token, on_signal):
            res = stream_scan(detector, listing.images, run.temp, threshold=thr, heatmaps=heatmaps, workers=workers,
                              progress=progress, cancel=token, partial=partial,
                              events=engine(detector, token) if engine else None)
    except OSError as exc:
        raise _export_error(exc, out) from None
    skipped = [*listing.problems, *listing.masks_skipped(), *res.skipped]
    complete = not res.interrupted
    written: dict[str, Path] = {}
    with deferred_signals(lambda name: say(f"\n{name}: finishing writing the results to {out}; "
                                           "interrupt again to abandon (the folder is then left as it was)")) as late:
        try:
            written["skipped"] = write_skipped(run.temp, skipped)
            if res.colour is not None and res.colour():
                written["heatmaps"] = run.temp / "heatmaps"
            if res.store is not None:
                res.store.close()
                if complete:
                    res.store.remove()  # kept only by an interrupted run, for a resume
            if res.journal is not None and complete:
                res.journal.remove()
            n_unscored = sum(1 for s in res.skipped if s.reason == NOT_SCORED)
            note = (f"Stopped by {stopped[0]} after {res.scored} of {len(listing.images)} images; "
                    f"the {n_unscored} not reached are listed in skipped.csv. Run the same scan into this "
                    "folder again to continue.") if not complete else ""
            run.commit(complete, info={"images": len(listing.images), "scored": res.scored, "skipped": len(skipped),
                                       "detector": detector.name, "fingerprint": fingerprint, "resumed": res.resumed},
                       note=note)
        except OSError as exc:
            raise _export_error(exc, out) from None
    written = {"results": out / "results.csv", "flagged": out / "flagged.txt",
               **{k: out / Path(v).name for k, v in written.items()}}
    result = ScanResult(detector.name, [], skipped, thr, res.seconds, interrupted=res.interrupted)
    return ScanOutcome(result, written, out, listing, (stopped or late or [""])[0], scored=res.scored,
                       flagged=res.flagged, resumed=res.resumed)
