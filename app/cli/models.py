"""``detectors``, ``train`` and ``scan``: list the detectors, train and save a model, score a folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from app.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ProgressBar,
    UsageError,
    add_runtime_options,
    err,
    existing_dir,
    finite,
    fraction,
    info,
    int_at_least,
    make_detector,
    parse_sets,
    positive_int,
)
from core.results.threshold import DEFAULT_FPR


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


def _train(detector, good_dir: Path, args: argparse.Namespace):
    from core.data.images import ImageSource

    good = ImageSource.from_folder(good_dir, recursive=getattr(args, "recursive", False))
    if len(good) == 0:
        raise UsageError(f"no image files in the good-image folder {good_dir}")
    from core.engine.workflows import train_detector

    bar = ProgressBar("train", quiet=args.quiet)
    try:
        report = train_detector(detector, good, fpr=args.fpr if args.fpr is not None else DEFAULT_FPR,
                                threshold=args.threshold, max_train=args.max_train, progress=bar,
                                calibration=getattr(args, "calibration", None),
                                folds=getattr(args, "folds", None) or 5,
                                estimator="tail" if getattr(args, "tail", False) else None,
                                self_check=getattr(args, "self_check", None), auto=getattr(args, "auto", False))
    finally:
        bar.close()
    for s in report.skipped:
        info(f"skipped {s.path}: {s.reason}", args.quiet)
    for c in report.candidates or []:
        from core.results.self_check import SelfCheck

        sets = " ".join(f"{k}={v}" for k, v in c["settings"].items()) or "(its own settings)"
        info(f"auto: {sets}: {SelfCheck.from_dict(c['self_check']).describe()}"
             + ("  <- chosen" if c["chosen"] else ""), args.quiet)
    info(f"trained {detector.describe_model()} in {report.fit_seconds:.1f}s; "
         f"{report.threshold.describe() if report.threshold else 'no threshold'}", args.quiet)
    if report.self_check is not None:
        info(report.self_check.describe(), args.quiet)
    _warn_threshold(report.threshold, args.quiet)
    return report


def _warn_threshold(threshold, quiet: bool) -> None:
    """Say when the target FPR is below what the calibration images support (core's words)."""
    text = threshold.support_warning() if threshold is not None else ""
    if text:
        info(f"warning: {text}", quiet)


def cmd_train(args: argparse.Namespace) -> int:
    good_dir = existing_dir(args.good_dir, "good-image folder")
    model_dir = Path(args.model).expanduser()
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"--model must be a folder, not a file: {model_dir}")
    detector = make_detector(args.detector, parse_sets(args.set), args.device)
    if detector.zero_shot:
        raise UsageError(f"{detector.name} is zero-shot: it needs no training")
    from core.io.checkpoint import CheckpointError, check_save_target

    try:
        check_save_target(model_dir)  # before the training, not after it
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    _train(detector, good_dir, args)

    try:
        detector.save(model_dir)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    info(f"saved model to {model_dir}", args.quiet)
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
    from core.detectors.exporting import load_exported
    from core.detectors.runtimes import RuntimeUnavailable
    from core.io.exported import is_exported

    model_dir = Path(args.model).expanduser()
    if not model_dir.exists():
        raise UsageError(f"model folder not found: {model_dir}")
    runtime, precision = getattr(args, "runtime", "auto"), getattr(args, "precision", "auto")
    try:
        if is_exported(model_dir):
            detector = load_exported(model_dir, runtime, precision, "cpu" if args.device == "auto" else args.device)
        else:
            detector = load_model(model_dir, device=args.device)
    except (DeviceError, CheckpointError, RuntimeUnavailable) as exc:  # not a model folder (or a broken one) is a bad path
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
        detector.threshold = calibrate(thr.calibration_scores, args.fpr,
                                       "tail" if getattr(args, "tail", False) else thr.estimator, thr.scheme)
    if args.threshold is None:
        _warn_threshold(detector.threshold, args.quiet)
    if not is_exported(model_dir):
        detector = apply_runtime_cli(detector, args)
    if args.threshold is None:
        _warn_precision(detector, args.quiet)
    return detector


def _warn_precision(detector, quiet: bool) -> None:
    """Say when the threshold was calibrated on scores of another precision than this scan's."""
    calibrated = str(detector.meta.get("calibrated_with") or "")
    if detector.threshold is None or not calibrated:
        return
    if calibrated.split()[-1] != detector.runtime.split()[-1]:
        info(f"note: the threshold was calibrated on {calibrated} scores and this scan runs {detector.runtime}; "
             "its scores differ slightly (docs/benchmarks.md, Runtimes), so an image right at the threshold may be "
             f"flagged differently (--precision {calibrated.split()[-1]} scores as calibrated)", quiet)


def check_runtime_args(args: argparse.Namespace, trains: bool) -> None:
    """``--runtime`` / ``--precision`` checked before any training or loading: the runtime is
    installed (else the message names the extra), the precision can run on it."""
    from core.detectors.runtimes import RuntimeUnavailable, check_precision, runtime_available

    runtime, precision = getattr(args, "runtime", "auto"), getattr(args, "precision", "auto")
    if precision == "int8" and trains:
        raise UsageError("--precision int8 runs a model exported with export-model --precision int8 --calibration "
                         "GOOD_DIR; scan it with --model")
    if runtime not in ("auto", "torch"):
        ok, why = runtime_available(runtime)
        if not ok:
            raise UsageError(why)
    if precision != "auto":
        try:
            check_precision("torch" if runtime == "auto" else runtime, precision)
        except RuntimeUnavailable as exc:
            if not (runtime == "auto" and precision == "int8" and not trains):  # an int8 export runs int8
                raise UsageError(str(exc)) from None


def apply_runtime_cli(detector, args: argparse.Namespace, good_dir: Path | None = None):
    """``--runtime`` / ``--precision`` on a loaded or trained model (an exported folder loads on its
    own runtime). ONNX Runtime and OpenVINO get the model exported on the fly; after a training
    (``good_dir``) the threshold is calibrated again on the runtime's scores of the same held-out
    images when its precision is not float32."""
    from core.detectors.exporting import apply_runtime
    from core.detectors.runtimes import ExportError, RuntimeUnavailable

    runtime, precision = getattr(args, "runtime", "auto"), getattr(args, "precision", "auto")
    t0 = time.perf_counter()
    try:
        out = apply_runtime(detector, runtime, precision)
    except (RuntimeUnavailable, ExportError) as exc:
        raise UsageError(str(exc)) from None
    if out is not detector:
        info(f"exported the model for {out.runtime} in {time.perf_counter() - t0:.1f} s "
             "(export-model once to skip this)", args.quiet)
    from core.engine.workflows import calibrated_elsewhere, recalibrate

    if good_dir is not None and out is not detector and args.threshold is None and calibrated_elsewhere(out):
        # held-out images scored again, or (kfold) the out-of-fold scores made again, on the runtime
        from core.data.images import ImageSource

        recalibrate(out, ImageSource.from_folder(good_dir, recursive=getattr(args, "recursive", False)),
                    max_train=args.max_train, fpr=args.fpr)
        info(f"threshold calibrated again on the {out.runtime} scores: {out.threshold.describe()}", args.quiet)
    return out


def cmd_scan(args: argparse.Namespace) -> int:
    # The output rules (fresh folder, lock, incomplete marker, never scanning the output) live
    # in core/engine/scan_run.py and core/io/run_folder.py; README "scan" says what they are.
    from core.engine.scan_run import (
        ExportError,
        NoImagesError,
        OutputFolderError,
        ResumeError,
        list_for_scan,
        scan_to_folder,
    )
    from core.results.threshold import Threshold

    folder = existing_dir(args.folder, "folder")
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
    check_runtime_args(args, trains=bool(args.train))
    if getattr(args, "engine", "local") == "ray" and (args.runtime != "auto" or args.precision != "auto"):
        raise UsageError("--engine ray scores with torch on each node; leave out --runtime and --precision")
    out_dir = Path(args.out).expanduser() if args.out else Path.cwd() / "anomaly-results" / (
        f"{folder.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        listing = list_for_scan(folder, out_dir, recursive=args.recursive, include=getattr(args, "include", None) or (),
                                exclude=getattr(args, "exclude", None) or ())
    except NoImagesError as exc:
        raise UsageError(str(exc)) from None
    if listing.describe():
        info(f"{folder}: {len(listing.images)} images; {listing.describe()}", args.quiet)
    scan = None
    if getattr(args, "session", None):
        from app.cli.sessions import check_scan_session, session_scanner

        check_scan_session(args, folder)
        scan = session_scanner(args, folder)

    def prepare():
        if args.model:
            return _load_for_scan(args)
        detector = make_detector(args.detector, parse_sets(args.set), args.device)
        if not detector.zero_shot:
            if not args.train:
                from core.detectors.registry import default_zero_shot_detector

                raise UsageError(f"{detector.name} is a trained detector: give --train GOOD_DIR or --model MODEL_DIR "
                                 f"(with no good images, a zero-shot detector needs neither: --detector "
                                 f"{default_zero_shot_detector()})")
            from core.detectors.exporting import resolve_runtime

            good_dir = existing_dir(args.train, "good-image folder")
            torch_runs = resolve_runtime(detector, getattr(args, "runtime", "auto"),
                                         getattr(args, "precision", "auto")) == "torch"
            if torch_runs:  # calibrated at the precision that scans
                detector = apply_runtime_cli(detector, args)
            _train(detector, good_dir, args)
            if not torch_runs:  # exported now, calibrated again on the runtime's scores if not float32
                detector = apply_runtime_cli(detector, args, good_dir)
        return detector

    threshold = Threshold.explicit(args.threshold) if args.threshold is not None else None
    engine = _ray_engine(args) if getattr(args, "engine", "local") == "ray" else None
    bar = ProgressBar("scan", quiet=args.quiet)
    try:
        outcome = scan_to_folder(listing, out_dir, prepare, threshold=threshold, heatmaps=not args.no_heatmaps,
                                 overwrite=getattr(args, "overwrite", False), progress=bar,
                                 log=lambda m: info(m, args.quiet), workers=getattr(args, "workers", None),
                                 resume=getattr(args, "resume", None), engine=engine,
                                 **({"scan": scan} if scan else {}))
    except (OutputFolderError, ResumeError) as exc:
        raise UsageError(str(exc)) from None
    except ExportError as exc:
        err(str(exc))
        return EXIT_FAILURE
    finally:
        bar.close()
    result, written = outcome.result, outcome.written
    masks = set(listing.masks)  # listed in skipped.csv; counted on the listing's line above, not one by one
    for s in result.skipped:
        if s.path not in masks:
            info(f"skipped {s.path}: {s.reason}", args.quiet)
    n, nf = outcome.scored, outcome.flagged
    thr = result.threshold.describe() if result.threshold else "no threshold"
    if result.grouping is not None:
        thr = f"groups by {result.grouping.describe()} (flagged = suspect group)"
    elif result.grouping_note:
        thr = f"not grouped: {result.grouping_note}"
    n_skipped = sum(1 for s in result.skipped if s.path not in masks)
    info(f"scored {n} images in {result.seconds:.1f}s, flagged {nf}, skipped {n_skipped}"
         f"{f' (and {len(masks)} mask files left out)' if masks else ''}; {thr}", args.quiet)
    info(f"wrote {', '.join(str(p) for p in written.values())}", args.quiet)
    if outcome.interrupted_by and not result.interrupted:
        err(f"interrupted ({outcome.interrupted_by}) while writing: the run was complete and {out_dir} holds all of it")
        return EXIT_INTERRUPTED
    if outcome.interrupted_by:
        err(f"interrupted ({outcome.interrupted_by}): {out_dir} holds the {n} images scored before it stopped, "
            f"marked incomplete ({out_dir / 'INCOMPLETE.txt'})")
        return EXIT_INTERRUPTED
    if n == 0:
        err(f"none of the {len(listing.images)} image files in {folder} could be read (see {written['skipped']})")
        return EXIT_FAILURE
    return EXIT_OK


def _ray_engine(args: argparse.Namespace):
    """``--engine ray``: checked before any work; the saved model is what every actor loads."""
    from core.engine.ray_scan import EXTRA_HINT, RayEngine, ray_available

    if not ray_available():
        raise UsageError(f"--engine ray needs Ray, which is not installed: {EXTRA_HINT}")
    if not args.model:
        raise UsageError("--engine ray needs --model MODEL_DIR (a saved model every Ray node can read at that path); "
                         "train one with 'anomaly-inspector train'")
    if getattr(args, "session", None):
        raise UsageError("--engine ray does not scan into a session; leave out --session")
    from core.detectors.registry import UnknownDetectorError, get_detector_class

    try:
        if get_detector_class(args.detector).zero_shot:
            raise UsageError(f"--engine ray scores trained detectors; {args.detector} is zero-shot")
    except UnknownDetectorError as exc:
        raise UsageError(str(exc)) from None
    overrides = parse_sets(args.set)
    model = Path(args.model).expanduser().resolve()
    return lambda detector, cancel: RayEngine(model, overrides, address=args.ray_address,
                                              batch_size=detector.config.batch_size, cancel=cancel)


def add_model_options(sp: argparse.ArgumentParser, detector_required: bool = True) -> None:
    """The options ``train`` and ``scan`` share."""
    sp.add_argument("--detector", required=detector_required, metavar="NAME", help="detector name (see 'detectors')")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a detector config field (repeatable)")
    sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    sp.add_argument("--max-train", type=positive_int, metavar="N", help="train on at most N good images (seeded)")
    sp.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                    help="include images in sub-folders (default: yes)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=finite, metavar="T", help="flag scores above T (instead of calibrating)")
    g.add_argument("--fpr", type=fraction, metavar="F",
                   help=f"target false-positive rate for calibration (default {DEFAULT_FPR:g})")
    sp.add_argument("--calibration", choices=("holdout", "kfold", "auto"), default=None,
                    help="calibrate on held-out images, on out-of-fold scores of all good images (kfold: --folds "
                         "more trainings, for cheap detectors), or auto (kfold, and a fitted tail, when the good "
                         "images are too few for the FPR); default: the detector's (see README, Threshold)")
    sp.add_argument("--folds", type=int_at_least(2), default=5, metavar="K", help="folds for --calibration kfold")
    sp.add_argument("--tail", action="store_true",
                    help="read the threshold from a fitted (log-)normal tail of the normal scores")
    sp.add_argument("--self-check", action=argparse.BooleanOptionalAction, default=None,
                    help="after training, score synthetic defects pasted into held-out good images and report the "
                         "self-check AUROC (default: on for the fast detectors)")
    sp.add_argument("--auto", action="store_true",
                    help="try the detector's candidate settings and keep the one with the best self-check "
                         "(no defect labels; costs one training per candidate)")


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("detectors", help="list the detectors and whether they can run here")
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=cmd_detectors)

    t = sub.add_parser("train", help="train a detector on good images and save the model")
    t.add_argument("good_dir", metavar="GOOD_DIR")
    t.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder to save the model in")
    add_model_options(t)
    t.set_defaults(handler=cmd_train)

    s = sub.add_parser("scan", help="score a folder and write results.csv, flagged.txt, skipped.csv, heatmaps/")
    s.add_argument("folder", metavar="FOLDER")
    s.add_argument("--train", metavar="GOOD_DIR", help="train on these good images first")
    s.add_argument("--model", metavar="MODEL_DIR", help="use a saved model")
    s.add_argument("--out", metavar="OUT_DIR", help="where to write (default ./anomaly-results/<folder>-<time>)")
    s.add_argument("--no-heatmaps", action="store_true", help="do not write heat map images")
    s.add_argument("--include", action="append", metavar="GLOB", help="scan only files matching GLOB (repeatable)")
    s.add_argument("--exclude", action="append", metavar="GLOB", help="leave out files matching GLOB (repeatable)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the content of a non-empty --out that holds no earlier results")
    s.add_argument("--workers", type=positive_int, metavar="N",
                   help="threads decoding images ahead of the model (default: the cores, at most 4)")
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="score here (default) or with Ray Data actors (needs the 'distributed' extra and --model)")
    s.add_argument("--ray-address", metavar="ADDR",
                   help="--engine ray: the cluster to join ('auto', HOST:6379, ray://HOST:10001); default: a Ray "
                        "instance on this machine")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue the interrupted run of the same model in --out (default: when there is one); "
                        "--resume requires one, --no-resume starts afresh")
    add_runtime_options(s)
    s.add_argument("--group", choices=("ncut", "kmeans", "gmm"),
                   help="zero-shot detectors: how the batch is split into normal / suspect groups "
                        "(default: the detector's 'group' setting, kmeans; ncut is the paper's)")
    add_model_options(s)
    from app.cli.sessions import add_session_option

    add_session_option(s)
    s.set_defaults(handler=cmd_scan)
