"""The ``anomaly-inspector`` command line: the same engine as the GUI, headless.

Exit codes: 0 success, 1 runtime failure, 2 usage error (bad path, unknown detector, bad
value), 130 interrupted. Usage errors print one line naming what is wrong.

One module per group of sub-commands, each with ``add_parsers(sub)`` that sets a ``handler``:
:mod:`app.cli.gui` (``gui``, ``demo``), :mod:`app.cli.models` (``detectors``, ``train``,
``scan``), :mod:`app.cli.bench`, :mod:`app.cli.exporting` (``export-model``), :mod:`app.cli.weights` and :mod:`app.cli.sessions` (``report``,
``export``, ``scan --session``); what they share is in
:mod:`app.cli.common`. A sub-command module that fails to import fails the whole command
line loudly: none silently disappears.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from app.cli import bench, exporting, gui, models, sessions, weights
from app.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, err, quiet_output, version

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-inspector",
                                description="Find defective parts in a folder of images. Without a command, opens the GUI.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    gui.add_parsers(sub)
    models.add_parsers(sub)
    gui.add_demo_parser(sub)
    bench.add_parsers(sub)
    exporting.add_parsers(sub)
    weights.add_parsers(sub)
    sessions.add_parsers(sub)
    return p


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--threshold -1e-3`` -> ``--threshold=-1e-3``: argparse takes a value like ``-1e-3``
    for an option unless it is joined to its flag."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        a = items[i]
        if a in ("--threshold", "--fpr") and i + 1 < len(items) and items[i + 1].startswith("-"):
            try:
                float(items[i + 1])
                out.append(f"{a}={items[i + 1]}")
                i += 2
                continue
            except ValueError:
                pass
        out.append(a)
        i += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        args = parser.parse_args(["gui"])
    try:
        with quiet_output(bool(getattr(args, "quiet", False))):
            return int(args.handler(args) or 0)
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # runtime failure: one line, exit 1 (set AI_DEBUG=1 for the traceback)
        if os.environ.get("AI_DEBUG"):
            raise
        err(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
