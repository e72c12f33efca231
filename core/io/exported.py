"""Exported model folders: a trained model with its network(s) as ONNX or OpenVINO graphs.

An exported folder holds the model folder's own ``config.json`` and ``weights.safetensors``
(settings, threshold, memory bank: what the Python side of scoring reads), the graph file(s)
(``<name>.onnx``, or ``<name>.xml`` + ``<name>.bin``) and ``export.json``: the format marker and
version, the runtime and precision it was exported for, each graph's inputs, output and the
input sizes it is valid for, the pre-processing and the heat-map colour scale in words, and a
manifest: the SHA-256 and size of every other file. Like a model folder it is untrusted input
(:mod:`core.io.checkpoint`): ``export.json`` is read only as a regular file under a size limit,
every field is validated, and every file of the manifest must be a regular file of its recorded
size and checksum, so a tampered, truncated or partly copied folder is refused with a one-line
:class:`~core.io.checkpoint.CheckpointError` before any graph is opened.

Writing is atomic per folder: everything goes into a hidden folder beside the target, which
replaces the target (an earlier export, or nothing) only when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.io.checkpoint import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    CheckpointError,
    _check_file,
    _sha256,
    read_format_json,
)

EXPORT_FORMAT = "anomaly-inspector-export"
EXPORT_VERSION = 1
EXPORT_NAME = "export.json"
#: Export runtimes and the graph files each writes per graph.
GRAPH_SUFFIXES = {"onnx": (".onnx",), "openvino": (".xml", ".bin")}
MAX_GRAPH_BYTES = 16 * 1024 ** 3
_REQUIRED = ("runtime", "precision", "detector", "graphs", "files")


def is_exported(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` claims to be an exported model (it has ``export.json``)."""
    p = Path(folder) / EXPORT_NAME
    return p.exists() or p.is_symlink()


def check_export_target(folder: str | os.PathLike) -> Path:
    """Raise :class:`CheckpointError` unless an export may be written to ``folder``: missing,
    empty, or holding an earlier export (which is replaced)."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"cannot export: {root} is a file, not a folder")
    if root.is_dir() and any(root.iterdir()) and not is_exported(root):
        raise CheckpointError(f"cannot export: {root} is not empty and holds no exported model (choose an empty folder)")
    return root


def _limit(name: str) -> tuple[int, str]:
    if name == CONFIG_NAME:
        return MAX_CONFIG_BYTES, "model configuration"
    if name == WEIGHTS_NAME:
        return MAX_WEIGHTS_BYTES, "weights file"
    return MAX_GRAPH_BYTES, "graph file"


def read_export(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read and validate ``export.json`` and (``verify``) every file of its manifest; every way
    the folder can be wrong is a one-line :class:`CheckpointError` naming the file."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"exported model not found: {root}" if not root.exists() else
                              f"not an exported model: {root} is a file")
    doc_path = root / EXPORT_NAME
    doc = read_format_json(doc_path, "export description", "export", EXPORT_FORMAT, EXPORT_VERSION,
                           "an exported Anomaly Inspector model")
    for key in _REQUIRED:
        if key not in doc:
            raise CheckpointError(f"corrupt export: {doc_path} lacks '{key}'")
    runtime = doc["runtime"]
    if runtime not in GRAPH_SUFFIXES:
        raise CheckpointError(f"corrupt export: runtime {runtime!r} in {doc_path} is not one of {', '.join(GRAPH_SUFFIXES)}")
    if doc["precision"] not in ("float32", "int8"):
        raise CheckpointError(f"corrupt export: precision {doc['precision']!r} in {doc_path} is not float32 or int8")
    if not isinstance(doc["detector"], str):
        raise CheckpointError(f"corrupt export: 'detector' in {doc_path} is not a name")
    files = doc["files"]
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"corrupt export: 'files' in {doc_path} is not a manifest of files")
    for name, rec in files.items():
        if (not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".")
                or name == EXPORT_NAME):
            raise CheckpointError(f"corrupt export: {doc_path} lists a file name that is not a plain name: {name!r}")
        if (not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str)
                or isinstance(rec.get("bytes"), bool) or not isinstance(rec.get("bytes"), int)):
            raise CheckpointError(f"corrupt export: the manifest entry of {name} in {doc_path} is not a checksum and a size")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if name not in files:
            raise CheckpointError(f"corrupt export: the manifest in {doc_path} does not list {name}")
    graphs = doc["graphs"]
    if not isinstance(graphs, dict) or not graphs:
        raise CheckpointError(f"corrupt export: 'graphs' in {doc_path} names no graph")
    for gname, g in graphs.items():
        if not isinstance(g, dict) or not isinstance(g.get("files"), list) or not g["files"]:
            raise CheckpointError(f"corrupt export: graph {gname!r} in {doc_path} lists no files")
        for f in g["files"]:
            if f not in files:
                raise CheckpointError(f"corrupt export: graph {gname!r} in {doc_path} names {f!r}, which the manifest does not list")
        if not str(g["files"][0]).endswith(GRAPH_SUFFIXES[runtime][0]):
            raise CheckpointError(f"corrupt export: graph {gname!r} in {doc_path} is not a {runtime} graph")
        frames = g.get("frames")
        if not isinstance(frames, dict) or not _valid_frames(frames):
            raise CheckpointError(f"corrupt export: graph {gname!r} in {doc_path} does not say which input sizes it takes")
    if verify:
        for name, rec in files.items():
            limit, what = _limit(name)
            size = _check_file(root / name, limit, what)
            if size != rec["bytes"]:
                raise CheckpointError(f"corrupt export: {root / name} has {size} bytes, the manifest in {EXPORT_NAME} "
                                      f"records {rec['bytes']} (truncated or replaced)")
            if _sha256(root / name) != rec["sha256"]:
                raise CheckpointError(f"corrupt export: {root / name} does not match the checksum recorded in {EXPORT_NAME}")
    return doc


def _valid_frames(frames: dict[str, Any]) -> bool:
    if set(frames) == {"multiple"}:
        m = frames["multiple"]
        return isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 4096
    if set(frames) == {"fixed"}:
        f = frames["fixed"]
        return (isinstance(f, list) and len(f) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 for v in f))
    if not frames:  # inputs without spatial axes
        return True
    return False


def manifest(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of each named file of ``folder``."""
    return {n: {"sha256": _sha256(folder / n), "bytes": (folder / n).stat().st_size} for n in names}


def finite_json(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (export.json is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class ExportFolder:
    """Write an exported folder atomically::

        with ExportFolder(target) as tmp:   # a hidden folder beside target
            ... write files into tmp ...
            done(header, names)             # export.json with the manifest, then tmp replaces target
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = check_export_target(target)
        self.temp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.temp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.export-", dir=parent))
        return self.temp

    def commit(self, header: dict[str, Any], names: list[str]) -> Path:
        """Write ``export.json`` (``header`` + the manifest of ``names``) and put the folder in place."""
        assert self.temp is not None
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.temp, 0o777 & ~mask)  # as a folder made with mkdir (mkdtemp makes it private)
        doc = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, **finite_json(header),
               "files": manifest(self.temp, names)}
        (self.temp / EXPORT_NAME).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.temp, self.target)
        self.temp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, *exc: object) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None
