"""The ``anomaly-inspector`` command line: the same engine as the GUI, headless.

Exit codes: 0 success, 1 runtime failure, 2 usage error (bad path, unknown detector, bad
value), 130 interrupted. Usage errors print one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Wrong arguments: exit 2 with a one-line message."""


# --------------------------------------------------------------------------- helpers
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anomaly-inspector")
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


def _existing_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} not found: {p}")
    if not p.is_dir():
        raise UsageError(f"{what} is not a folder: {p}")
    return p


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text}")
    return v


def _finite(text: str) -> float:
    import math

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


_positive_int = int_at_least(1)


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


def _err(msg: str) -> None:
    sys.stderr.write(f"anomaly-inspector: {msg}\n")


def _info(msg: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(msg + "\n")


# --------------------------------------------------------------------------- commands
def cmd_detectors(args: argparse.Namespace) -> int:
    from core.detectors.registry import REGISTRY

    rows = []
    for name, cls in REGISTRY.items():
        ok, reason = cls.availability()
        weights = [r.name for r in cls.requirements()] or ["none"]
        rows.append({
            "name": name,
            "kind": "zero-shot" if cls.zero_shot else "trained",
            "maps": bool(cls.produces_maps),
            "weights": weights,
            "available": ok,
            "reason": reason,
            "summary": cls.summary,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    w = max(len(r["name"]) for r in rows)
    print(f"{'detector':<{w}}  {'kind':<9}  {'maps':<4}  {'weights':<20}  available")
    for r in rows:
        avail = "yes" if r["available"] else f"no: {r['reason']}"
        print(f"{r['name']:<{w}}  {r['kind']:<9}  {'yes' if r['maps'] else 'no':<4}  {', '.join(r['weights']):<20}  {avail}")
        print(f"{'':<{w}}  {r['summary']}")
    return EXIT_OK


def _make_detector(name: str, sets: dict[str, str], device: str):
    from core.detectors.config import ConfigError
    from core.detectors.registry import UnknownDetectorError, create_detector
    from core.runtime.device import DeviceError

    try:
        return create_detector(name, sets, device)
    except (UnknownDetectorError, ConfigError, DeviceError) as exc:
        raise UsageError(str(exc)) from None


def _train(detector, good_dir: Path, args: argparse.Namespace):
    from core.data.images import ImageSource

    good = ImageSource.from_folder(good_dir, recursive=getattr(args, "recursive", False))
    if len(good) == 0:
        raise UsageError(f"no image files in the good-image folder {good_dir}")
    from core.engine.workflows import train_detector

    bar = ProgressBar("train", quiet=args.quiet)
    try:
        report = train_detector(detector, good, fpr=args.fpr if args.fpr is not None else 0.01,
                                threshold=args.threshold, max_train=args.max_train, progress=bar)
    finally:
        bar.close()
    for s in report.skipped:
        _info(f"skipped {s.path}: {s.reason}", args.quiet)
    _info(f"trained {detector.name} on {report.n_train} good images in {report.fit_seconds:.1f}s; "
          f"{report.threshold.describe() if report.threshold else 'no threshold'}", args.quiet)
    return report


def cmd_train(args: argparse.Namespace) -> int:
    good_dir = _existing_dir(args.good_dir, "good-image folder")
    model_dir = Path(args.model).expanduser()
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"--model must be a folder, not a file: {model_dir}")
    detector = _make_detector(args.detector, parse_sets(args.set), args.device)
    if detector.zero_shot:
        raise UsageError(f"{detector.name} is zero-shot: it needs no training")
    _train(detector, good_dir, args)
    from core.io.checkpoint import CheckpointError

    try:
        detector.save(model_dir)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    _info(f"saved model to {model_dir}", args.quiet)
    return EXIT_OK


def _load_for_scan(args: argparse.Namespace):
    from core.detectors.config import ConfigError
    from core.detectors.registry import UnknownDetectorError, get_detector_class, load_model
    from core.io.checkpoint import CheckpointError
    from core.results.threshold import calibrate
    from core.runtime.device import DeviceError

    try:
        get_detector_class(args.detector)
    except UnknownDetectorError as exc:
        raise UsageError(str(exc)) from None
    model_dir = Path(args.model).expanduser()
    if not model_dir.exists():
        raise UsageError(f"model folder not found: {model_dir}")
    try:
        detector = load_model(model_dir, device=args.device)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None
    if detector.name != args.detector:
        raise UsageError(f"{model_dir} holds a '{detector.name}' model, not '{args.detector}'")
    try:
        detector.change_settings(parse_sets(args.set), hint="retrain with --train")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    changed = detector.threshold_mismatch()
    if changed and args.threshold is None:
        raise UsageError(
            f"the threshold of {model_dir} was set for other settings ({'; '.join(changed)}), so it says nothing "
            "about these scores: give --threshold T, or retrain with --train"
        )
    if args.fpr is not None and args.threshold is None:
        thr = detector.threshold
        if thr is None or not thr.calibration_scores:
            raise UsageError(f"{model_dir} has no calibration scores to re-calibrate at --fpr; give --threshold")
        detector.threshold = calibrate(thr.calibration_scores, args.fpr)
    return detector, CheckpointError


def cmd_scan(args: argparse.Namespace) -> int:
    from core.data.images import ImageSource
    from core.engine.workflows import scan_images
    from core.io.export import export_scan
    from core.results.threshold import Threshold

    folder = _existing_dir(args.folder, "folder")
    if args.train and args.model:
        raise UsageError("give either --train GOOD_DIR or --model MODEL_DIR, not both")
    if getattr(args, "group", None):
        from core.detectors.registry import UnknownDetectorError, get_detector_class

        try:
            zero_shot = get_detector_class(args.detector).zero_shot
        except UnknownDetectorError as exc:
            raise UsageError(str(exc)) from None
        if not zero_shot:
            raise UsageError(f"--group applies to zero-shot detectors only; {args.detector} flags by its threshold")
        args.set = [*(args.set or []), f"group={args.group}"]
    source = ImageSource.from_folder(folder, recursive=args.recursive)
    if len(source) == 0:
        raise UsageError(f"no image files (png, jpg, bmp, tif, webp) in {folder}"
                         + ("" if args.recursive else " (sub-folders were not searched: --no-recursive)"))
    if args.model:
        detector, _ = _load_for_scan(args)
    else:
        detector = _make_detector(args.detector, parse_sets(args.set), args.device)
        if not detector.zero_shot:
            if not args.train:
                raise UsageError(f"{detector.name} is a trained detector: give --train GOOD_DIR or --model MODEL_DIR")
            _train(detector, _existing_dir(args.train, "good-image folder"), args)
    out_dir = Path(args.out).expanduser() if args.out else Path.cwd() / "anomaly-results" / (
        f"{folder.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out must be a folder, not a file: {out_dir}")
    threshold = Threshold.explicit(args.threshold) if args.threshold is not None else None
    bar = ProgressBar("scan", quiet=args.quiet)
    try:
        result = scan_images(detector, source, threshold=threshold, progress=bar)
    finally:
        bar.close()
    if (out_dir / "results.csv").exists():
        _info(f"note: replacing the earlier results in {out_dir}", args.quiet)
    written = export_scan(out_dir, result, heatmaps=not args.no_heatmaps)
    for s in result.skipped:
        _info(f"skipped {s.path}: {s.reason}", args.quiet)
    n, nf = len(result.rows), len(result.flagged)
    thr = result.threshold.describe() if result.threshold else "no threshold"
    if result.grouping is not None:
        thr = f"groups by {result.grouping.describe()} (flagged = suspect group)"
    elif result.grouping_note:
        thr = f"not grouped: {result.grouping_note}"
    _info(f"scored {n} images in {result.seconds:.1f}s, flagged {nf}, skipped {len(result.skipped)}; {thr}", args.quiet)
    _info(f"wrote {', '.join(str(p) for p in written.values())}", args.quiet)
    if n == 0:
        _err(f"none of the {len(source)} image files in {folder} could be read (see {written['skipped']})")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_gui(args: argparse.Namespace) -> int:
    folder = str(_existing_dir(args.folder, "folder")) if args.folder else None
    good = str(_existing_dir(args.good, "good-image folder")) if args.good else None
    if args.detector:
        from core.detectors.registry import UnknownDetectorError, get_detector_class

        try:
            get_detector_class(args.detector)
        except UnknownDetectorError as exc:
            raise UsageError(str(exc)) from None
    from app.gui import run_gui

    return run_gui(folder=folder, good=good, detector=args.detector, autorun=args.run or bool(args.screenshot),
                   screenshot=args.screenshot)


def has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    from core.data.sample import default_sample_dir, generate_sample
    from core.detectors.registry import default_detector

    detector = default_detector()
    root = generate_sample(Path(args.dir).expanduser() if args.dir else default_sample_dir())
    _info(f"sample parts in {root} (good/ for training, batch/ to inspect)", args.quiet)
    headless = args.headless or not has_display()
    if not headless:
        from app.gui import run_gui

        return run_gui(folder=str(root / "batch"), good=str(root / "good"), detector=detector, autorun=True)
    _info("no display: running the same job headless", args.quiet)
    ns = argparse.Namespace(
        folder=str(root / "batch"), detector=detector, train=str(root / "good"), model=None,
        out=args.out or str(root / "results"), threshold=None, fpr=None, set=[], device=args.device,
        recursive=True, no_heatmaps=False, max_train=None, quiet=args.quiet,
    )
    return cmd_scan(ns)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-inspector",
                                description="Find defective parts in a folder of images. Without a command, opens the GUI.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, detector_required: bool = True) -> None:
        sp.add_argument("--detector", required=detector_required, metavar="NAME", help="detector name (see 'detectors')")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a detector config field (repeatable)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
        sp.add_argument("--max-train", type=_positive_int, metavar="N", help="train on at most N good images (seeded)")
        sp.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                        help="include images in sub-folders (default: yes)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--threshold", type=_finite, metavar="T", help="flag scores above T (instead of calibrating)")
        g.add_argument("--fpr", type=_fraction, metavar="F", help="target false-positive rate for calibration (default 0.01)")

    g = sub.add_parser("gui", help="open the GUI (default)")
    g.add_argument("folder", nargs="?", help="folder of images to open")
    g.add_argument("--good", metavar="DIR", help="folder of good images for trained detectors")
    g.add_argument("--detector", metavar="NAME")
    g.add_argument("--run", action="store_true", help="train if needed and run at once")
    g.add_argument("--screenshot", metavar="PNG", help="run, save a screenshot of the window to PNG and quit")

    d = sub.add_parser("detectors", help="list the detectors and whether they can run here")
    d.add_argument("--json", action="store_true")

    t = sub.add_parser("train", help="train a detector on good images and save the model")
    t.add_argument("good_dir", metavar="GOOD_DIR")
    t.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder to save the model in")
    common(t)

    s = sub.add_parser("scan", help="score a folder and write results.csv, flagged.txt, skipped.csv, heatmaps/")
    s.add_argument("folder", metavar="FOLDER")
    s.add_argument("--train", metavar="GOOD_DIR", help="train on these good images first")
    s.add_argument("--model", metavar="MODEL_DIR", help="use a saved model")
    s.add_argument("--out", metavar="OUT_DIR", help="where to write (default ./anomaly-results/<folder>-<time>)")
    s.add_argument("--no-heatmaps", action="store_true", help="do not write heat map images")
    s.add_argument("--group", choices=("ncut", "kmeans", "gmm"),
                   help="zero-shot detectors: how the batch is split into normal / suspect groups "
                        "(default: the detector's 'group' setting, ncut)")
    common(s)

    m = sub.add_parser("demo", help="generate a sample batch and inspect it (GUI, or headless without a display)")
    m.add_argument("--dir", metavar="DIR", help="where to generate the sample (default: the user data folder)")
    m.add_argument("--out", metavar="OUT_DIR", help="headless results folder (default DIR/results)")
    m.add_argument("--headless", action="store_true", help="do not open a window even if a display is present")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("-q", "--quiet", action="store_true")

    try:
        from app.bench_cli import add_bench_parser  # noqa: WPS433 - optional until the harness lands
    except ImportError:
        add_bench_parser = None
    if add_bench_parser is not None:
        add_bench_parser(sub)
    try:
        from app.weights_cli import add_weights_parser
    except ImportError:
        add_weights_parser = None
    if add_weights_parser is not None:
        add_weights_parser(sub)
    return p


COMMANDS = {"detectors": cmd_detectors, "train": cmd_train, "scan": cmd_scan, "gui": cmd_gui, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui"])
    command = args.command
    handler: Any = COMMANDS.get(command) or getattr(args, "handler", None)
    try:
        return int(handler(args) or 0)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # runtime failure: one line, exit 1 (set AI_DEBUG=1 for the traceback)
        if os.environ.get("AI_DEBUG"):
            raise
        _err(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
