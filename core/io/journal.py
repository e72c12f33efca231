"""A streamed scan's resume journal: a digest of every row and skip it wrote, to check on resume.

An interrupted scan keeps ``results.csv``, ``skipped.csv`` and its raw maps so that the same
scan into the same ``--out`` can continue it (:mod:`core.engine.stream_scan`). Those files
are plain text a person (or a stray script) can edit; a resumed run marked complete must not
carry an edited score, flag or reason. So the scan also appends, for every row and every skip
it writes, one fixed-size record to ``.journal`` in the run's folder: the row's listing index
in that run and a 64-bit BLAKE2b digest of the row as written (column names and values, the
path included). On resume a row or skip is taken over only if its digest is in the journal;
the journal also gives the index the row had in the interrupted run, which is how its raw
map in the map store (:mod:`core.io.map_store`, indexed by that run's listing) is found again
when files were added to the folder in between. A complete run deletes the journal.

Not a security measure (anyone who can edit the CSV can recompute a digest): it catches the
accidental and the careless — an edited cell, a spreadsheet's re-save, a truncated file.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

JOURNAL_NAME = ".journal"
ROW, SKIP = 1, 2
_MAGIC = b"AIJOURN1"
_RECORD = struct.Struct("<qQQ")  # listing index, kind, digest


def digest(kind: int, names: Sequence[str], values: Sequence[str]) -> int:
    """The 64-bit digest of one written row (``names`` are the CSV's columns)."""
    h = hashlib.blake2b(digest_size=8, person=b"ai-journal")
    h.update(str(kind).encode())
    for k, v in zip(names, values):
        h.update(b"\x1e" + k.encode("utf-8", "surrogateescape") + b"\x1f" + v.encode("utf-8", "surrogateescape"))
    h.update(b"\x1d%d" % len(values))
    return int.from_bytes(h.digest(), "little")


class Journal:
    """Appends one record per row or skip written (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "wb")
        self._fh.write(_MAGIC)

    def add(self, index: int, kind: int, names: Sequence[str], values: Sequence[str]) -> None:
        self._fh.write(_RECORD.pack(int(index), kind, digest(kind, names, values)))

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def read_journal(path: str | os.PathLike) -> dict[tuple[int, int], int]:
    """``{(kind, digest): index in the interrupted run}`` of a journal; empty when it is
    missing or not a journal (every row is then scored again)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return {}
    if not raw.startswith(_MAGIC):
        return {}
    body = raw[len(_MAGIC):]
    out: dict[tuple[int, int], int] = {}
    for index, kind, dig in _RECORD.iter_unpack(body[: len(body) - len(body) % _RECORD.size]):
        out.setdefault((int(kind), int(dig)), int(index))
    return out
