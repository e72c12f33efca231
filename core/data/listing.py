"""Listing the images of a folder: the one function the GUI and ``scan`` both use.

:func:`list_folder` walks a folder (and, unless told not to, its sub-folders) and decides,
for every entry it meets, whether it is an image to inspect, a mask of a known dataset layout,
something a file-name pattern left out, an output folder of an earlier run, or a problem to
report:

- **Masks are not parts.** An MVTec ``ground_truth/`` folder is not descended into, and in the
  MTD layout (``MT_*/Imgs/``) a ``.png`` beside a ``.jpg``/``.jpeg`` of the same stem is that
  image's mask. Elsewhere such a ``.png`` is a mask only if it looks like one: one channel, the
  size of the ``.jpg``, at most two distinct values; any other ``.png`` is a part like any
  other. Every mask left out is returned with its reason (:meth:`Listing.masks_skipped`), so
  that a scan lists it in ``skipped.csv``.
- **Patterns.** ``include`` / ``exclude`` are shell globs (``*.png``, ``good/*``) matched
  against the file name and against the path relative to the folder (``/`` separators); a
  file is listed when it matches some include pattern (or none are given) and no exclude
  pattern.
- **Own output.** A folder holding the run marker (:data:`RUN_MARKER`, written by every
  ``scan``) and any path in ``skip`` (the run's own ``--out``) are never descended into.
- **Nothing vanishes silently.** Broken symbolic links, symbolic-link loops, folders that
  cannot be read and image names that are not regular files (a pipe, a device) are returned
  in ``problems`` with a reason, so that a scan can report them in ``skipped.csv``.

Hidden files and folders (a name starting with ``.``) are left out, as before.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data.images import IMAGE_EXTENSIONS, Skipped

#: Written into every scan output folder; a folder holding it is never scanned as parts.
RUN_MARKER = ".anomaly-inspector-run"
#: MVTec AD keeps its defect masks here.
MVTEC_MASK_DIR = "ground_truth"
_MTD_IMAGE_SUFFIXES = (".jpg", ".jpeg")
MASK_REASON = "a mask of a dataset layout, not a part"


def _is_mtd_folder(d: Path) -> bool:
    """``MT_<category>/Imgs``: where the Magnetic Tile Defects dataset keeps a mask beside each tile."""
    return d.name == "Imgs" and d.parent.name.startswith("MT_")


def _looks_like_mask(png: Path, jpg: Path) -> bool:
    """A ``.png`` that is one channel, of ``jpg``'s size, with at most two distinct values."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(jpg) as im:
                size = im.size
            with Image.open(png) as im:
                if im.mode not in ("1", "L") or im.size != size or size[0] * size[1] > 64_000_000:
                    return False
                im.load()
                return np.unique(np.asarray(im)).size <= 2
    except Exception:  # unreadable: a part, and the scan says what is wrong with it
        return False


@dataclass
class Listing:
    """What :func:`list_folder` found: images to inspect and everything it left out, with why."""

    root: Path
    images: list[Path] = field(default_factory=list)
    #: Entries that could not be listed (broken link, loop, unreadable folder), with a reason.
    problems: list[Skipped] = field(default_factory=list)
    #: Image files recognised as masks of a dataset layout (not parts).
    masks: list[Path] = field(default_factory=list)
    #: Why each of :attr:`masks` is one.
    mask_reasons: dict[Path, str] = field(default_factory=dict)
    #: Image files left out by the include / exclude patterns.
    excluded: list[Path] = field(default_factory=list)
    #: Output folders of scans (the run marker, or ``skip``) that were not descended into.
    outputs: list[Path] = field(default_factory=list)

    def masks_skipped(self) -> list[Skipped]:
        """The masks left out, each with its reason (a scan lists them in ``skipped.csv``)."""
        return [Skipped(p, self.mask_reasons.get(p, MASK_REASON)) for p in self.masks]

    def describe(self) -> str:
        """One line on what was left out (empty when nothing was)."""
        parts = []
        if self.masks:
            parts.append(f"{len(self.masks)} mask files")
        if self.excluded:
            parts.append(f"{len(self.excluded)} files by pattern")
        if self.outputs:
            parts.append(f"{len(self.outputs)} result folders")
        if self.problems:
            parts.append(f"{len(self.problems)} unlistable entries")
        return f"left out {', '.join(parts)}" if parts else ""


def _matches(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def list_folder(
    folder: str | os.PathLike,
    *,
    recursive: bool = True,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    skip: Iterable[str | os.PathLike] = (),
) -> Listing:
    """List the images of ``folder`` (sorted) and what was left out; see the module docstring.

    Raises ``FileNotFoundError`` / ``NotADirectoryError`` for a wrong ``folder`` so that the
    caller can name the wrong path.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    inc, exc = tuple(include), tuple(exclude)
    skip_keys = set()
    for s in skip:
        try:
            skip_keys.add(_key(os.stat(s)))
        except OSError:
            pass
    out = Listing(root)
    visited = {_key(os.stat(root))}

    def walk(d: Path, depth_rel: str) -> None:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            out.problems.append(Skipped(d, "folder cannot be read (permission denied)"))
            return
        except OSError as err:
            out.problems.append(Skipped(d, f"folder cannot be read ({err.strerror or err})"))
            return
        names = {e.name for e in entries}
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            rel = f"{depth_rel}{e.name}"
            suffix = p.suffix.lower()
            try:
                st = os.stat(p)  # follows links
            except FileNotFoundError:
                if e.is_symlink() and (suffix in IMAGE_EXTENSIONS or not suffix):
                    out.problems.append(Skipped(p, "broken symbolic link (its target does not exist)"))
                continue
            except OSError as err:
                if err.errno == errno.ELOOP:
                    out.problems.append(Skipped(p, "symbolic link loop"))
                elif suffix in IMAGE_EXTENSIONS or not suffix:
                    out.problems.append(Skipped(p, f"cannot access ({err.strerror or err})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if not recursive:
                    continue
                if _key(st) in skip_keys or (p / RUN_MARKER).exists():
                    out.outputs.append(p)
                    continue
                if e.name == MVTEC_MASK_DIR:
                    found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
                    out.masks.extend(found)
                    out.mask_reasons.update((q, f"a mask of the MVTec AD layout ({MVTEC_MASK_DIR}/), not a part")
                                            for q in found)
                    continue
                if _key(st) in visited:
                    out.problems.append(Skipped(p, "symbolic link loop (this folder is already listed)"))
                    continue
                visited.add(_key(st))
                walk(p, f"{rel}/")
                continue
            if suffix not in IMAGE_EXTENSIONS:
                continue
            if not stat.S_ISREG(st.st_mode):
                out.problems.append(Skipped(p, "not a regular file (a pipe, socket or device)"))
                continue
            jpg = next((n for s in _MTD_IMAGE_SUFFIXES for n in (f"{p.stem}{s}", f"{p.stem}{s.upper()}") if n in names),
                       None) if suffix == ".png" else None
            if jpg is not None and (_is_mtd_folder(d) or _looks_like_mask(p, d / jpg)):
                out.masks.append(p)  # the mask of the .jpg beside it
                out.mask_reasons[p] = f"the mask of {jpg} beside it, not a part"
                continue
            if (inc and not _matches(rel, e.name, inc)) or (exc and _matches(rel, e.name, exc)):
                out.excluded.append(p)
                continue
            out.images.append(p)

    walk(root, "")
    out.images.sort()
    return out
