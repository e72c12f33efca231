"""What every sub-command module shares: exit codes, the usage error, argument types,
the progress bar, messages on stderr and building a detector from ``--set`` values."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Wrong arguments: exit 2 with a one-line message."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("anomaly-inspector")
    except PackageNotFoundError:
        return "0+unknown"


def parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        out[key] = value
    return out


def existing_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} not found: {p}")
    if not p.is_dir():
        raise UsageError(f"{what} is not a folder: {p}")
    return p


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text}")
    return v


def finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite: {text}")
    return v


def int_at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text}")
        return v

    return parse


positive_int = int_at_least(1)


class ProgressBar:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise."""

    def __init__(self, label: str, stream=None, quiet: bool = False) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0
        self._last_decile = -1
        self._t0 = time.monotonic()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.quiet or total <= 0:
            return
        frac = min(1.0, max(0.0, done / total))
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw < 0.1 and frac < 1.0:
                return
            self._last_draw = now
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            eta = ""
            if 0.02 < frac < 1.0:
                eta = f" eta {((now - self._t0) / frac) * (1 - frac):.0f}s"
            self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}%{eta} {message[:40]:<40}")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.label}: {frac * 100:.0f}% {message}\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


@contextmanager
def quiet_output(quiet: bool) -> Iterator[None]:
    """``-q``: no Python warnings (RuntimeWarnings of a damaged image...) and none of the C
    libraries' chatter (libpng, OpenCV's ``[ WARN:...]``), which write straight to file
    descriptor 2: it points at the null device meanwhile, and ``sys.stderr`` at a copy of the
    real one, so this program's own messages (errors) still get through."""
    if not quiet:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            real = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # a captured stream (tests): Python warnings only
            real = False
        if not real:
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        before = sys.stderr
        sys.stderr = os.fdopen(os.dup(saved), "w", encoding=before.encoding, errors=before.errors, buffering=1)
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = before
            os.dup2(saved, 2)
            os.close(saved)


def err(msg: str) -> None:
    sys.stderr.write(f"anomaly-inspector: {msg}\n")


def info(msg: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(msg + "\n")


def make_detector(name: str, sets: dict[str, str], device: str):
    from core.detectors.config import ConfigError
    from core.detectors.registry import UnknownDetectorError, create_detector
    from core.runtime.device import DeviceError

    try:
        return create_detector(name, sets, device)
    except (UnknownDetectorError, ConfigError, DeviceError) as exc:
        raise UsageError(str(exc)) from None


RUNTIME_CHOICES = ("auto", "torch", "onnx", "openvino")
PRECISION_CHOICES = ("auto", "float32", "bfloat16", "int8")


def add_runtime_options(sp: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--precision`` (scan, bench): what runs the detector's network."""
    sp.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                    help="what runs the network: torch, onnx (ONNX Runtime) or openvino, the last two from an exported "
                         "model or exported on the fly; auto: an exported model's own runtime, else the fastest "
                         "installed (openvino, onnx, torch) for a detector that can be exported (README, Exporting)")
    sp.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                    help="float32, bfloat16 (CPUs with bf16 instructions; not onnx) or int8 (an export quantised with "
                         "export-model --precision int8); auto: bfloat16 for openvino where the CPU has bf16 "
                         "instructions, else float32")
