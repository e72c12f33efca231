"""A scan's output folder that is always either one complete run or clearly marked incomplete.

:class:`RunFolder` is how ``scan`` writes ``--out``:

1. **Check first** (before any training or scoring): ``--out`` is not a file, not the scanned
   folder or a folder above it, and either missing, empty, or the output of an earlier run
   (it holds the run marker, or a ``results.csv``); anything else is refused unless
   ``overwrite`` is given. Its parent must be writable: the temporary folder is created
   there at once, so a read-only place is reported before the work, naming the path.
2. **Lock**: ``.<name>.lock`` beside ``--out`` holds the process id; a second run into the
   same folder is refused while the first is alive (a lock left by a killed run is taken over).
   A ``--out`` that is a symbolic link is written through: the folder it points to is the one
   replaced, and the link stays.
3. **Write into a fresh folder** beside ``--out`` with a unique name
   (``.<name>.tmp-<pid>-<random>``), never into ``--out`` itself.
4. **Replace when done**: the run marker (:data:`~core.data.listing.RUN_MARKER`, JSON: complete
   or not, times, counts) is written last, then the old ``--out`` is renamed aside, the new
   folder renamed into place and the old one deleted. An interrupted run that is committed
   incomplete also gets ``INCOMPLETE.txt`` saying so. A run that stops any other way (an
   error, a second interrupt, SIGKILL) leaves ``--out`` as it was; its temporary folder is
   removed, or, after SIGKILL, removed by the next run into the same ``--out``.

The marker also keeps a later scan of a parent folder from scoring these files as parts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data.listing import RUN_MARKER

INCOMPLETE_NAME = "INCOMPLETE.txt"


class OutputFolderError(Exception):
    """The output folder cannot be used; the one-line message names the path and says why."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate it; assume alive, the message says what to do
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    """Delete a set-aside output: a folder, or the symbolic link ``--out`` was (never its target)."""
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


#: What a scan writes: a folder holding only these (and a results.csv) is an older scan's output.
SCAN_OUTPUT_NAMES = frozenset({"results.csv", "flagged.txt", "flagged.csv", "skipped.csv", "heatmaps",
                               "heatmap_scale.json", "provenance.json", INCOMPLETE_NAME, RUN_MARKER})


def is_run_output(folder: Path) -> bool:
    """Whether ``folder`` holds the output of an earlier scan (safe to replace): it has the run
    marker, or (written before the marker existed) a ``results.csv`` and nothing a scan does
    not write."""
    if (folder / RUN_MARKER).exists():
        return True
    names = {p.name for p in folder.iterdir()}
    return "results.csv" in names and names <= SCAN_OUTPUT_NAMES


class RunFolder:
    """Use as a context manager: ``with RunFolder(out) as run: ...; run.commit(...)``.

    ``run.temp`` is where to write. Leaving the block without :meth:`commit` removes the
    temporary folder and leaves ``out`` untouched; the lock is released either way.
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, protect: Sequence[str | os.PathLike] = ()):
        self.out = Path(out).absolute()
        if self.out.is_symlink():  # write through the link: the folder it names is replaced, the link stays
            self.out = Path(os.path.realpath(self.out))
        self.overwrite = overwrite
        self.protect = [Path(p).resolve() for p in protect]
        self.temp: Path | None = None
        self.lock: Path = self.out.parent / f".{self.out.name}.lock"
        self.committed = False
        self._locked = False
        self._created: list[Path] = []
        self.started = time.time()

    # ------------------------------------------------------------------ open
    def check(self) -> None:
        """Refuse an ``out`` that must not be written or replaced (see the module docstring)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputFolderError(f"--out must be a folder, not a file: {out}")
        real = out.resolve()
        for p in self.protect:
            if real == p or _inside(p, real):
                raise OutputFolderError(f"--out must not be the scanned folder or a folder above it: {out}")
        try:
            foreign = out.is_dir() and any(out.iterdir()) and not is_run_output(out)
        except OSError as exc:
            raise OutputFolderError(f"cannot read the output folder {out}: {exc.strerror or exc}") from None
        if foreign and not self.overwrite:
            raise OutputFolderError(
                f"--out {out} is not empty and holds no earlier results: choose an empty or new folder, "
                "or give --overwrite to replace its content")

    def open(self) -> Path:
        self.check()
        try:
            missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._created = missing  # removed again if the run never commits and they stay empty
        except OSError as exc:
            raise OutputFolderError(f"cannot create the output folder {self.out.parent}: {exc.strerror or exc}") from None
        self._acquire_lock()
        try:
            self._remove_leftovers()
            self.temp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-{os.getpid()}-", dir=self.out.parent))
            probe = self.temp / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            self.close()
            raise OutputFolderError(f"cannot write into {self.out.parent}: {exc.strerror or exc}") from None
        return self.temp

    def _acquire_lock(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = -1
                if pid == -1 and time.time() - self._mtime(self.lock) < 5:
                    time.sleep(0.2)  # another run is just writing its pid
                    continue
                if pid != -1 and _pid_alive(pid):
                    raise OutputFolderError(
                        f"another scan (process {pid}) is writing to {self.out}; wait for it or choose another --out "
                        f"(if no scan is running, delete {self.lock})") from None
                self.lock.unlink(missing_ok=True)  # left by a run that was killed
                continue
            except OSError as exc:
                raise OutputFolderError(f"cannot write into {self.out.parent}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self._locked = True
            return
        raise OutputFolderError(f"cannot lock {self.out} (delete {self.lock} if no scan is running)")

    @staticmethod
    def _mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    def _remove_leftovers(self) -> None:
        """Temporary / set-aside folders of killed runs into the same ``out`` (we hold the lock)."""
        for kind in ("tmp", "old"):
            prefix = f".{self.out.name}.{kind}-"
            for p in [q for q in self.out.parent.iterdir() if q.name.startswith(prefix)]:
                try:
                    pid = int(p.name.split(f".{kind}-", 1)[1].split("-", 1)[0])
                except (IndexError, ValueError):
                    continue
                if not _pid_alive(pid):
                    _remove(p)

    # ------------------------------------------------------------------ close
    def commit(self, complete: bool, info: dict[str, Any] | None = None, note: str = "") -> Path:
        """Mark the temporary folder (complete or not) and put it in place of ``out``."""
        assert self.temp is not None, "open() first"
        marker = {"complete": bool(complete), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(), **(info or {})}
        if not complete:
            (self.temp / INCOMPLETE_NAME).write_text(
                "This run did not finish: results.csv holds only the images scored before it stopped.\n"
                + (note + "\n" if note else ""), encoding="utf-8")
        (self.temp / RUN_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-{os.getpid()}-", dir=self.out.parent))
            os.rmdir(old)
            os.replace(self.out, old)
        os.replace(self.temp, self.out)
        self.committed = True
        self.temp = None
        if old is not None:
            _remove(old)
        return self.out

    def close(self) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None
        if self._locked:
            self.lock.unlink(missing_ok=True)
            self._locked = False
        if not self.committed:
            for p in self._created:  # innermost first
                try:
                    p.rmdir()
                except OSError:
                    break

    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
