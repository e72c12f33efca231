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
loops and unreadable folders among the skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.data.images import ImageSource, Skipped
from core.data.listing import Listing, list_folder
from core.detectors.base import Detector
from core.engine.workflows import scan_images
from core.io.export import display_path, export_scan
from core.io.run_folder import OutputFolderError, RunFolder  # noqa: F401 - raised from here
from core.results import ScanResult
from core.results.threshold import Threshold
from core.runtime.cancel import CancelToken
from core.runtime.progress import ProgressFn
from core.runtime.signals import cancel_on_signals, deferred_signals

NOT_SCORED = "not scored: the scan was interrupted"


class NoImagesError(ValueError):
    """The folder holds no image to scan; the message names it."""


class ExportError(RuntimeError):
    """The results could not be written; ``out`` was left as it was."""


@dataclass
class ScanOutcome:
    result: ScanResult
    written: dict[str, Path]
    out: Path
    listing: Listing
    #: The name of the signal that stopped the scan ("SIGINT", "SIGTERM"), else "". A signal
    #: that came while the results were written is named here too, with a complete result.
    interrupted_by: str = ""


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
    scan: ScanFn = _plain_scan,
    threshold: Optional[Threshold] = None,
    heatmaps: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> ScanOutcome:
    """Scan ``listing.images`` with the detector ``prepare()`` returns (called once ``out``
    is checked and locked) and write the results to ``out``; see the module docstring.
    ``scan`` scores the images (by default :func:`~core.engine.workflows.scan_images`; a
    session scan reuses stored scores).

    Raises :class:`~core.io.run_folder.OutputFolderError` (``out`` unusable, before any work)
    and :class:`ExportError`; ``KeyboardInterrupt`` after a second signal.
    """
    say = log or (lambda _m: None)
    with RunFolder(out, overwrite=overwrite, protect=[listing.root]) as run:
        detector = prepare()
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
        result.skipped = [*listing.problems, *result.skipped, *unscored]
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
                where = display_path(exc.filename) if getattr(exc, "filename", None) else str(out)
                raise ExportError(f"cannot write the results ({exc.strerror or exc}: {where}); "
                                  f"{out} was left as it was") from None
        written = {k: out / Path(v).name for k, v in written.items()}
    return ScanOutcome(result, written, out, listing, (stopped or late or [""])[0])

