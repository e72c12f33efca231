"""``anomaly-inspector bench``: train and evaluate a detector on a labelled dataset.

Prints a table of the metrics and timings on stdout (progress on stderr) and, with
``--json OUT.json``, writes the result of :func:`core.engine.bench.run_bench`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from app.cli.common import (
    EXIT_OK,
    ProgressBar,
    UsageError,
    add_runtime_options,
    info,
    int_at_least,
    parse_sets,
    positive_int,
)

LAYOUT_CHOICES = ("auto", "mvtec", "mtd", "folder")


_seed = int_at_least(0)


def _number_list(kind: type) -> Any:
    """argparse type: comma-separated positive numbers, e.g. ``10,30``."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(not math.isfinite(v) or v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values
    return parse


def add_parsers(sub: Any) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench",
        help="train and evaluate a detector on a labelled dataset (metrics and timings)",
        description="Train a detector on the dataset's training split (with a calibrated threshold), score the "
                    "test split and report image AUROC, pixel AUROC, AUPRO, F1-max, accuracy, recall, "
                    "time and memory. A metric that does not apply is shown as n/a (null in the JSON).",
    )
    b.add_argument("dataset", metavar="DATASET", help="dataset folder: an MVTec AD category or root, MTD, or good/ + defect/")
    b.add_argument("--detector", required=True, metavar="NAME", help="detector name (see 'detectors')")
    b.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help="dataset layout (default: detect it)")
    b.add_argument("--category", metavar="C", help="MVTec AD category (needed for a root with several)")
    b.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (default auto)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a detector config field (repeatable)")
    b.add_argument("--max-train", type=positive_int, metavar="N",
                   help="train on at most N training images, seeded (the few-shot setting)")
    b.add_argument("--max-test", type=positive_int, metavar="N",
                   help="evaluate on a seeded stratified subset of at most N test images")
    b.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed for every random choice, incl. the detector's seed unless --set seed=... (default 0)")
    m = b.add_mutually_exclusive_group()
    m.add_argument("--save-model", metavar="MODEL_DIR",
                   help="save the trained model (before scoring), to evaluate it again later with --model")
    m.add_argument("--model", metavar="MODEL_DIR",
                   help="evaluate a model saved by --save-model instead of training one; --set may change "
                        "settings not baked into the weights (the threshold is re-calibrated when they "
                        "change the scores)")
    b.add_argument("--snapshot-minutes", type=_number_list(float), default=(), metavar="M[,M...]",
                   help="with --save-model: also save the model as it stood after M minutes of training "
                        "(MODEL_DIR-<M>min), for a learning curve from one run; evaluate each with --model")
    b.add_argument("--snapshot-epochs", type=_number_list(int), default=(), metavar="E[,E...]",
                   help="with --save-model: also save the model after epoch E (MODEL_DIR-<E>ep)")
    b.add_argument("--batch", default="test", choices=("test", "all"),
                   help="zero-shot detectors: score the test split alone (default) or the whole dataset, training "
                        "and test images together as one unlabelled batch (the zero-shot paper's protocol; the "
                        "training images count as good)")
    b.add_argument("--self-check", action=argparse.BooleanOptionalAction, default=None,
                   help="self-check the trained model on synthetic defects and print it beside the real AUROC "
                        "(default: on for the fast detectors)")
    b.add_argument("--auto", action="store_true",
                   help="let the detector choose its settings by self-check (no labels) before training")
    add_runtime_options(b)
    b.add_argument("--decode-workers", type=positive_int, metavar="N",
                   help="threads decoding the test images ahead of the model (default: as scan, the cores, at most 4)")
    b.add_argument("--score-runs", type=positive_int, default=1, metavar="N",
                   help="scan the test split N times after the warm-up and report the median scan's speed with "
                        "every run's (default 1; the metrics come from the first scan)")
    b.add_argument("--json", metavar="OUT.json", help="write the result as JSON to this file")
    b.add_argument("--scores", metavar="OUT.csv",
                   help="write every scored image's path, label (1 = defective), score and group to this CSV file")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(handler=cmd_bench)
    return b


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def _runs_note(runs: list | None) -> str:
    """``; the median of N scans: a, b, c images/s`` where the test split was scanned more than once."""
    if not runs or len(runs) < 2:
        return ""
    return f"; the median of {len(runs)} scans: " + ", ".join(_fmt(r, 1) for r in runs) + " images/s"


def format_table(res: dict[str, Any]) -> str:
    """The human-readable summary printed by ``bench``."""
    m, t = res["metrics"], res["timing"]
    cfg = " ".join(f"{k}={v}" for k, v in res["config"].items())
    fit = "n/a (zero-shot)" if t["fit_seconds"] is None else f"{t['fit_seconds']:.2f} s"
    ips = t["score_images_per_second"]
    rows = [
        ("detector", res["detector"]),
        ("dataset", res["dataset"] + (f" (category {res['category']})" if res["category"] else "")),
        ("device", res["device"]),
        ("config", cfg),
        ("images", f"{res['n_train']} train, {res['n_test']} test"
                   + (" (the batch: training and test images together)" if res.get("batch") == "train+test" else "")),
        ("", ""),
        ("image AUROC", _fmt(m["image_auroc"])),
        ("pixel AUROC", _fmt(m["pixel_auroc"])),
        ("AUPRO (FPR<=0.3)", _fmt(m["aupro"])),
        ("F1-max", _fmt(m["f1_max"])),
        ("accuracy", _fmt(m["accuracy"])),
        ("recall", _fmt(m["recall"])),
        *_self_check_rows(res.get("self_check"), res.get("auto")),
        *_grouping_rows(res.get("groupings")),
        ("", ""),
        ("fit", fit),
        *_training_rows(res.get("training")),
        ("scoring", f"{t['score_seconds']:.2f} s ({_fmt(ips, 1)} images/s)" + _runs_note(t.get("score_runs"))),
        *_runtime_rows(res.get("runtime"), t.get("decode_workers")),
        ("peak RSS", "n/a" if t["peak_rss_mb"] is None else f"{t['peak_rss_mb']:.0f} MB (process)"),
        ("peak GPU", "n/a" if t["peak_gpu_mb"] is None else f"{t['peak_gpu_mb']:.0f} MB"),
        *_machine_rows(res.get("machine")),
        ("version", res["version"]),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}".rstrip() for k, v in rows)


def _self_check_rows(check: dict[str, Any] | None, auto: list | None) -> list[tuple[str, str]]:
    """The self-check beside the real AUROC (synthetic defects, no labels), and what auto chose."""
    rows = []
    if check:
        sizes = ", ".join(f"{float(k):.0%} {_fmt(v, 3)}" for k, v in (check.get("by_size") or {}).items())
        smallest = check.get("smallest_separated")
        rows.append(("self-check AUROC", f"{_fmt(check.get('auroc'))} (synthetic defects; by size {sizes}; "
                     f"separates down to {'none' if smallest is None else f'{smallest:.0%}'})"))
    for c in auto or []:
        if c.get("chosen"):
            rows.append(("auto chose", " ".join(f"{k}={v}" for k, v in c["settings"].items()) or "its own settings"))
    return rows


def _training_rows(training: dict[str, Any] | None) -> list[tuple[str, str]]:
    """How far a trained model got (``12 epochs, 156 steps, time budget reached``); nothing for others."""
    if not training:
        return []
    parts = [f"{training[k]} {label}" for k, label in (("epochs_done", "epochs"), ("steps", "steps")) if k in training]
    if training.get("stopped_by") == "time":
        parts.append("time budget reached")
    return [("trained", ", ".join(parts))] if parts else []


#: how each bank search reads in the report (all three are exact)
SEARCH_WORDS = {"bf16": "bf16 product, float32 decision (exact)", "faiss": "faiss flat L2 (exact)",
                "torch": "torch products (exact)"}


def search_words(search: str) -> str:
    """How a bank search reads in the report: ``pca64+bf16`` is the approximate search in 64
    principal components (``search_dims``) by the exact one named after the ``+``."""
    if search.startswith("pca") and "+" in search:
        dims, sub = search[3:].split("+", 1)
        return (f"nearest in {dims} principal components by {SEARCH_WORDS.get(sub, sub).replace(' (exact)', '')}, "
                "distance in all (approximate: search_dims)")
    return SEARCH_WORDS.get(search, search)


def _runtime_rows(runtime: dict[str, Any] | None, workers: int | None) -> list[tuple[str, str]]:
    """What ran the network while the test split was scored (runtime, precision, threads)."""
    if not runtime:
        return []
    text = f"{runtime['runtime']} {runtime['precision']}, {runtime['threads']} threads"
    if (runtime.get("lanes") or 1) > 1:
        text += f" in {runtime['lanes']} scoring lanes"
    if workers:
        text += f", {workers} decoding"
    if runtime.get("convert_seconds") is not None:
        text += f" (exported and loaded in {runtime['convert_seconds']:.1f} s)"
    if runtime.get("search"):
        text += f"; nearest-neighbour search: {search_words(runtime['search'])}"
    return [("runtime", text)]


def _machine_rows(machine: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The CPU a row's timing belongs to: model, threads, vector capability, bf16 instructions."""
    from core.runtime.device import describe_machine

    return [("machine", describe_machine(machine))] if machine else []


def _grouping_rows(groupings: dict[str, Any] | None) -> list[tuple[str, str]]:
    """One line per grouping method of a zero-shot batch (the paper's Table 2 comparison)."""
    if not groupings:
        return []
    rows = []
    for method, g in groupings.items():
        if g.get("error"):
            text = f"could not split: {g['error']}"
        else:
            text = (f"{g['normal']} normal, {g['suspect']} suspect; accuracy {_fmt(g['accuracy'])}, "
                    f"recall {_fmt(g['recall'])}")
        rows.append((f"  {method} groups", text))
    return rows


def _out_target(text: str | None, option: str) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"{option} must be a file, not a folder: {path}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{option}: {parent} is not a folder")
    return path


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-image scores of a bench run as CSV (:data:`core.engine.bench.PER_IMAGE_KEYS`)."""
    import csv

    from core.engine.bench import PER_IMAGE_KEYS

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=PER_IMAGE_KEYS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                        for k in PER_IMAGE_KEYS})


def cmd_bench(args: argparse.Namespace) -> int:
    from core.data.layouts import DatasetError
    from core.detectors.config import ConfigError
    from core.detectors.registry import UnknownDetectorError, get_detector_class
    from core.detectors.runtimes import ExportError, RuntimeUnavailable
    from core.engine.bench import run_bench
    from core.io.checkpoint import CheckpointError
    from core.runtime.device import DeviceError

    out = _out_target(args.json, "--json")
    scores_out = _out_target(args.scores, "--scores")
    dataset = Path(args.dataset).expanduser()
    if not dataset.exists():
        raise UsageError(f"dataset folder not found: {dataset}")
    if not dataset.is_dir():
        raise UsageError(f"dataset is not a folder: {dataset}")
    try:
        get_detector_class(args.detector)
    except UnknownDetectorError as exc:
        raise UsageError(str(exc)) from None
    sets = parse_sets(args.set)
    if (args.snapshot_minutes or args.snapshot_epochs) and not args.save_model:
        raise UsageError("--snapshot-minutes / --snapshot-epochs need --save-model (the snapshots are saved beside it)")
    skipped: list = []
    per_image: list = []
    bar = ProgressBar("bench", quiet=args.quiet)
    try:
        res = run_bench(args.dataset, args.detector, layout=args.layout, category=args.category,
                        device=args.device, overrides=sets, max_train=args.max_train, max_test=args.max_test,
                        seed=args.seed, progress=bar, skipped=skipped, model_dir=args.model,
                        save_model=args.save_model, snapshot_minutes=args.snapshot_minutes,
                        snapshot_epochs=args.snapshot_epochs, zero_shot_batch=args.batch,
                        per_image=per_image, self_check=args.self_check, auto=args.auto, runtime=args.runtime,
                        precision=args.precision, decode_workers=args.decode_workers, score_runs=args.score_runs)
    except (DatasetError, UnknownDetectorError, ConfigError, DeviceError, CheckpointError, RuntimeUnavailable,
            ExportError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    for s in skipped:
        info(f"skipped {s.path}: {s.reason}", args.quiet)
    if args.model:
        info(f"evaluated the saved model {args.model} (fit time as saved with it)", args.quiet)
        if res["metrics"]["accuracy"] is None and res["metrics"]["image_auroc"] is not None:
            info("no decisions: the model's threshold was set for other settings and its calibration images "
                  "are not known for this dataset, so accuracy and recall are n/a", args.quiet)
    if args.save_model:
        info(f"saved the trained model to {args.save_model}", args.quiet)
        from core.engine.bench import snapshot_folder, snapshot_labels

        for label in snapshot_labels(args.snapshot_minutes, args.snapshot_epochs):
            folder = snapshot_folder(args.save_model, label)
            if folder.is_dir():
                info(f"saved the snapshot after {label} of training to {folder}", args.quiet)
            else:
                info(f"no snapshot after {label}: training ended before it", args.quiet)
    print(format_table(res), flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        info(f"wrote {out}", args.quiet)
    if scores_out is not None:
        write_scores(scores_out, per_image)
        info(f"wrote the scores of {len(per_image)} images to {scores_out}", args.quiet)
    return EXIT_OK
