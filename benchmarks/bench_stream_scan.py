"""``scan`` throughput and peak memory on large synthetic folders (issue 18).

Generates N small synthetic part images (PNG, not committed; kept under --data for re-use),
trains a model once (``--detector``, default ``pixel-gaussian``; ``patchcore`` needs its
backbone's weights), then runs ``anomaly-inspector scan --model`` in a
subprocess per count and reads the child's peak RSS from the kernel (``os.wait4``). With
``--root`` another checkout's code does the scan (``--root /work/main`` is "before").

    .venv/bin/python benchmarks/bench_stream_scan.py --counts 1000 10000 --json docs/bench/stream_scan.json
    .venv/bin/python benchmarks/bench_stream_scan.py --counts 1000 --root ../main --label before

images/s is the scan's own figure (scoring and writing, from its summary line), and the wall
time includes the interpreter and torch start-up.

Real images instead of synthetic ones (issue 28: is decoding the bottleneck once the network is
fast?): ``--folder`` scans that folder with the saved ``--model``, once per ``--workers`` value
(decoding threads), with ``--extra`` passed on (``--runtime openvino``):

    .venv/bin/python benchmarks/bench_stream_scan.py --folder ../shared/datasets/mvtec_ad/bottle \
        --model MODEL --detector patchcore --workers 1 2 4 --extra "--runtime openvino" --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: benchmarks._common must import at the end (--json)
    sys.path.insert(0, str(REPO))
RUN = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"


def make_images(folder: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` PNGs of ``size`` px: a grey disc with noise, every 10th with a dark scratch."""
    folder.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in folder.glob("*.png"))
    if have == n:
        return folder
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2).astype(np.float32)
    for i in range(n):
        img = 0.3 + 0.4 * disc + rng.normal(0, 0.03, (size, size)).astype(np.float32)
        if i % 10 == 9:
            r = int(rng.integers(size // 4, 3 * size // 4))
            img[r:r + 2, size // 4: 3 * size // 4] = 0.05
        cv2.imwrite(str(folder / f"part{i:06d}.png"), np.clip(img * 255, 0, 255).astype(np.uint8))
    return folder


def run_cli(argv: list[str], root: Path, env: dict | None = None) -> tuple[int, float, float, str]:
    """Run the CLI of ``root`` in a child; (exit code, wall seconds, peak RSS MiB, stderr)."""
    e = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    with tempfile.TemporaryFile("w+") as errf:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", RUN, *argv], cwd=str(root), env=e,
                                stdout=subprocess.DEVNULL, stderr=errf)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    return proc.returncode, wall, usage.ru_maxrss / 1024.0, err


def model_size(model: Path) -> int | None:
    """The saved model's working resolution (its ``image_size`` setting), if it has one."""
    try:
        return json.loads((model / "config.json").read_text())["config"]["image_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train(model: Path, good: Path, root: Path, sets: list[str] = (), detector: str = "pixel-gaussian") -> None:
    if (model / "config.json").exists():
        return
    rc, _, _, err = run_cli(["train", str(good), "--detector", detector, "--model", str(model), "-q",
                             *(a for kv in sets for a in ("--set", kv))], root)
    if rc:
        raise SystemExit(f"training failed: {err}")


def scan(folder: Path, model: Path, out: Path, root: Path, extra: list[str] = (), detector: str = "pixel-gaussian") -> dict:
    rc, wall, rss, err = run_cli(["scan", str(folder), "--detector", detector, "--model", str(model),
                                  "--out", str(out), *extra], root)
    if rc:
        raise SystemExit(f"scan failed ({rc}): {err[-2000:]}")
    hit = re.search(r"scored (\d+) images in ([\d.]+)s", err)
    scored, secs = (int(hit.group(1)), float(hit.group(2))) if hit else (0, float("nan"))
    return {"scored": scored, "scan_seconds": secs, "images_per_s": scored / secs if secs else float("nan"),
            "wall_seconds": round(wall, 2), "peak_rss_mib": round(rss, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "ai-stream-bench",
                    help="where the synthetic images and the model are kept between runs")
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose code runs the scan")
    ap.add_argument("--label", default="after")
    ap.add_argument("--detector", default="pixel-gaussian", help="detector to train and scan with (default pixel-gaussian)")
    ap.add_argument("--extra", default="", help="more scan options, e.g. '--workers 2' or '--engine ray'")
    ap.add_argument("--image-size", type=int, help="the model's working resolution (default: the detector's own: "
                    "256 for pixel-gaussian, 224 for patchcore)")
    ap.add_argument("--folder", type=Path, help="scan this folder (with --model) instead of synthetic images")
    ap.add_argument("--model", type=Path, help="the saved model --folder is scanned with")
    ap.add_argument("--workers", type=int, nargs="+", help="--folder: one scan per number of decoding threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    extra = args.extra.split()
    if args.folder is not None:
        if args.model is None:
            ap.error("--folder needs --model")
        rows = []
        for w in args.workers or [None]:
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()[0]
                res = scan(args.folder, args.model, Path(tmp) / "out", args.root.resolve(),
                           [*extra, *(["--workers", str(w)] if w else [])], args.detector)
            res.update(folder=str(args.folder), workers=w, label=args.label, detector=args.detector, extra=args.extra,
                       load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
            rows.append(res)
            print(json.dumps(res), flush=True)
        _write_json(args, rows)
        return
    good = make_images(args.data / "good", 50, args.size, seed=1)
    name = "model" if args.detector == "pixel-gaussian" else f"model-{args.detector}"
    model = args.data / (name if args.image_size is None else f"{name}-{args.image_size}")
    train(model, good, REPO, [] if args.image_size is None else [f"image_size={args.image_size}"], args.detector)
    rows = []
    for n in args.counts:
        folder = make_images(args.data / f"n{n}", n, args.size, seed=2)
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            res = scan(folder, model, Path(tmp) / "out", args.root.resolve(), extra, args.detector)
        res.update(count=n, label=args.label, detector=args.detector, size=args.size, extra=args.extra, model_image_size=args.image_size or model_size(model))
        rows.append(res)
        print(json.dumps(res), flush=True)
    _write_json(args, rows)


def _write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    if args.json:
        from benchmarks._common import machine

        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine(), "command": " ".join(sys.argv), "rows": rows}
        old = json.loads(args.json.read_text()) if args.json.exists() else {"runs": []}
        old.setdefault("runs", []).append(doc)
        args.json.write_text(json.dumps(old, indent=2))


if __name__ == "__main__":
    main()
