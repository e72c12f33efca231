"""``gui`` and ``demo``: open the window (or, without a display, run the demo headless)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.common import UsageError, existing_dir, info
from app.cli.models import cmd_scan


def add_parsers(sub: Any) -> None:
    g = sub.add_parser("gui", help="open the GUI (default)")
    g.add_argument("folder", nargs="?", help="folder of images to open")
    g.add_argument("--good", metavar="DIR", help="folder of good images for trained detectors")
    g.add_argument("--detector", metavar="NAME")
    g.add_argument("--run", action="store_true", help="train if needed and run at once")
    g.add_argument("--screenshot", metavar="PNG", help="run, save a screenshot of the window to PNG and quit")
    g.set_defaults(handler=cmd_gui)


def add_demo_parser(sub: Any) -> None:
    m = sub.add_parser("demo", help="generate a sample batch and inspect it (GUI, or headless without a display)")
    m.add_argument("--dir", metavar="DIR", help="where to generate the sample (default: the user data folder)")
    m.add_argument("--out", metavar="OUT_DIR", help="headless results folder (default DIR/results)")
    m.add_argument("--headless", action="store_true", help="do not open a window even if a display is present")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("-q", "--quiet", action="store_true")
    m.set_defaults(handler=cmd_demo)


def cmd_gui(args: argparse.Namespace) -> int:
    folder = str(existing_dir(args.folder, "folder")) if args.folder else None
    good = str(existing_dir(args.good, "good-image folder")) if args.good else None
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
    info(f"sample parts in {root} (good/ for training, batch/ to inspect)", args.quiet)
    headless = args.headless or not has_display()
    if not headless:
        from app.gui import run_gui

        return run_gui(folder=str(root / "batch"), good=str(root / "good"), detector=detector, autorun=True)
    info("no display: running the same job headless", args.quiet)
    ns = argparse.Namespace(
        folder=str(root / "batch"), detector=detector, train=str(root / "good"), model=None,
        out=args.out or str(root / "results"), threshold=None, fpr=None, set=[], device=args.device,
        recursive=True, no_heatmaps=False, max_train=None, quiet=args.quiet, overwrite=False,
    )
    return cmd_scan(ns)
