"""``export-model``: a trained model's network as an ONNX or OpenVINO graph, for the line PC.

The exported folder scans with ``scan FOLDER --model EXPORTED_DIR`` on the runtime it was
exported for (README, "Exporting a model"); a tampered or truncated one is refused like a
tampered model folder (exit 2, one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.cli.common import EXIT_OK, UsageError, existing_dir, info, positive_int

FORMATS = ("onnx", "openvino")


def cmd_export_model(args: argparse.Namespace) -> int:
    from core.detectors.exporting import export_model
    from core.detectors.registry import load_model
    from core.detectors.runtimes import ExportError, RuntimeUnavailable, runtime_available
    from core.io.checkpoint import CheckpointError
    from core.io.exported import is_exported

    model_dir = Path(args.model_dir).expanduser()
    if not model_dir.exists():
        raise UsageError(f"model folder not found: {model_dir}")
    if is_exported(model_dir):
        raise UsageError(f"{model_dir} is an exported model already; export the model folder it came from")
    ok, why = runtime_available(args.format)
    if not ok:
        raise UsageError(why)
    if args.precision == "int8" and not args.calibration:
        raise UsageError("--precision int8 needs --calibration GOOD_DIR (good images to quantise on)")
    if args.calibration and args.precision != "int8":
        raise UsageError("--calibration applies to --precision int8 only")
    out = Path(args.out).expanduser()
    if out.resolve() == model_dir.resolve():
        raise UsageError(f"--out must be another folder than the model folder {model_dir}")
    try:
        detector = load_model(model_dir, device="cpu")
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    calibration = None
    if args.calibration:
        calibration = _calibration_images(existing_dir(args.calibration, "calibration folder"), args.max_calibration,
                                          args.quiet)
    try:
        report = export_model(detector, out, args.format, args.precision, calibration, source=str(model_dir))
    except (ExportError, RuntimeUnavailable, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    for name, check in report.checks.items():
        info(f"graph '{name}': largest deviation from the torch model {check['max_abs_deviation']:.2g} on values up "
             f"to {check['max_abs_value']:.3g} ({check['inputs']} test inputs)", args.quiet)
    info(f"exported {detector.describe_model()} for {args.format} ({args.precision}) to {out} in "
         f"{report.seconds:.1f} s; scan with: anomaly-inspector scan FOLDER --detector {detector.name} --model {out}",
         args.quiet)
    return EXIT_OK


def _calibration_images(folder: Path, limit: int, quiet: bool) -> list:
    from core.data.images import ImageReadError, ImageSource

    source = ImageSource.from_folder(folder, recursive=True)
    if len(source) == 0:
        raise UsageError(f"no image files in the calibration folder {folder}")
    images = []
    for i in range(len(source)):
        if len(images) >= limit:
            break
        try:
            images.append(source[i])
        except ImageReadError as exc:
            info(f"skipped {source.path(i)}: {exc}", quiet)
    if not images:
        raise UsageError(f"none of the images in the calibration folder {folder} could be read")
    return images


def add_parsers(sub: Any) -> None:
    e = sub.add_parser("export-model", help="export a trained model for ONNX Runtime or OpenVINO (the line PC)",
                       description="Write MODEL_DIR's network as an ONNX graph or OpenVINO IR, with the model's "
                                   "settings, threshold, memory bank and a checksum manifest, into --out; scan it "
                                   "with 'scan FOLDER --model OUT'.")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder saved by train or bench --save-model")
    e.add_argument("--format", required=True, choices=FORMATS, help="onnx (ONNX Runtime) or openvino")
    e.add_argument("--out", required=True, metavar="DIR", help="the exported folder (missing, empty, or an earlier export)")
    e.add_argument("--precision", choices=("float32", "int8"), default="float32",
                   help="float32 (default; bfloat16 is chosen when it runs) or int8 (quantised on --calibration)")
    e.add_argument("--calibration", metavar="GOOD_DIR", help="--precision int8: good images to quantise on")
    e.add_argument("--max-calibration", type=positive_int, default=64, metavar="N",
                   help="--precision int8: at most N calibration images (default 64)")
    e.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    e.set_defaults(handler=cmd_export_model)
