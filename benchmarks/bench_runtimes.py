"""Speed levers for scoring on the CPU (issue 28): one ``bench`` per lever and dataset.

Trains the detector once per dataset (``bench --save-model``, kept under ``--models``) and then
evaluates that one model under each lever in a child process of its own (so its peak RSS is its
own): torch eager float32 (today's default), ``torch.compile``, torch bf16 autocast, ONNX
Runtime float32 and int8, OpenVINO float32, bf16 and int8 (int8: quantised on the fit images,
good images only). Each child writes the ``bench`` JSON (``runtime`` says what ran, ``timing``
the images/s and the CPU seconds, ``machine`` the CPU) plus the lever name and the load average
before and after it, so a row says whether the machine was loaded. A summary table (image AUROC
and its change from torch float32, pixel AUROC, images/s, CPU ms per image, peak RSS, load) is
printed and written to ``<out>/summary-<tag>.json``.

    .venv/bin/python benchmarks/bench_runtimes.py                         # bottle and MTD, every lever
    .venv/bin/python benchmarks/bench_runtimes.py --data bottle --levers torch-fp32,openvino-bf16
    .venv/bin/python benchmarks/bench_runtimes.py --set resize=keep --tag keep   # other patchcore settings
    .venv/bin/python benchmarks/bench_runtimes.py --backbone MODEL --threads 1    # the network alone, per lever

Run it with nothing else on the machine for speed figures; ``--threads N`` pins the threads of
torch, faiss and the runtimes' sessions (``OMP_NUM_THREADS``; the images are still decoded ahead
by ``scan``'s default number of threads). The datasets come from ``../shared/datasets`` (or ``$AI_DATASETS``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

DATASETS = Path(os.environ.get("AI_DATASETS", REPO.parent / "shared" / "datasets"))
DATA = {"bottle": DATASETS / "mvtec_ad" / "bottle", "mtd": DATASETS / "mtd"}
#: lever name -> (runtime, precision, torch.compile)
LEVERS = {
    "torch-fp32": ("torch", "float32", False),
    "torch-compile": ("torch", "float32", True),
    "torch-bf16": ("torch", "bfloat16", False),
    "onnx-fp32": ("onnx", "float32", False),
    "onnx-int8": ("onnx", "int8", False),
    "openvino-fp32": ("openvino", "float32", False),
    "openvino-bf16": ("openvino", "bfloat16", False),
    "openvino-int8": ("openvino", "int8", False),
}


def compiled(detector):
    """The torch.compile lever: the detector's feature network compiled (its graphs' module, with
    the backbone's padding fixed so that it compiles without Python arithmetic on shapes)."""
    import torch

    from core.detectors.runtimes import TorchRunner

    for g in detector.graphs():
        detector.use_runner(g.name, TorchRunner(torch.compile(g.module, dynamic=None)))
    return detector


def one(data: str, model: Path, lever: str, out: Path, sets: list[str], threads: int | None) -> None:
    """One lever in this process: ``bench --model`` with the lever's runtime, JSON to ``out``."""
    import torch

    from core.engine.bench import run_bench

    if threads:
        torch.set_num_threads(threads)
    runtime, precision, compile_ = LEVERS[lever]
    overrides = dict(s.split("=", 1) for s in sets if "=" in s)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = run_bench(DATA.get(data, data), "patchcore", device="cpu", model_dir=model, overrides=overrides, runtime=runtime,
                    precision=precision, on_model=compiled if compile_ else None)
    res["lever"] = lever
    res["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    res["wall_seconds"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def backbone(model: Path, out: Path, levers: list[str], repeat: int = 6, batch: int = 8) -> list[dict]:
    """The network alone, lever by lever: CPU ms per image of one batch of working frames (the
    saved model's frame), its largest deviation from torch float32, in this process."""
    import tempfile

    import torch

    from core.data.images import ImageSource
    from core.detectors.registry import load_model
    from core.detectors.runtimes import OnnxRunner, OpenVINORunner, TorchRunner, export_onnx, quantize_int8, to_openvino

    det = load_model(model, device="cpu")
    g = det.graphs([ImageSource(sorted((DATA["bottle"] / "train" / "good").glob("*.png"))[:32])[i] for i in range(32)])[0]
    x = torch.rand((batch, *g.example[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = g.module(x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f32 = export_onnx(g, Path(tmp) / "f.onnx")
        q8 = None
        for lever in levers:
            runtime, precision, compile_ = LEVERS[lever]
            if runtime == "torch":
                runner = TorchRunner(torch.compile(g.module) if compile_ else det._raw, precision)
            else:
                path = f32
                if precision == "int8":
                    q8 = q8 or quantize_int8(f32, Path(tmp) / "q.onnx", g)
                    path = q8
                if runtime == "openvino":
                    path = to_openvino(path, Path(tmp) / f"{lever}.xml")[0]
                cls = OnnxRunner if runtime == "onnx" else OpenVINORunner
                runner = cls(path, precision, g.frames, g.name)
            with torch.inference_mode():
                t0 = time.perf_counter()
                runner(x)  # warm-up (and compilation)
                first = time.perf_counter() - t0
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(repeat):
                    y = runner(x)
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            rows.append({"lever": lever, "cpu_ms_per_image": 1000 * cpu / repeat / batch,
                         "wall_ms_per_image": 1000 * wall / repeat / batch, "first_call_seconds": first,
                         "max_abs_deviation": float((y.float() - ref).abs().max()), "max_abs_value": float(ref.abs().max())})
            print(json.dumps(rows[-1]), flush=True)
    from core.runtime.device import machine_info

    doc = {"model": str(model), "frame": list(x.shape), "threads": torch.get_num_threads(), "rows": rows,
           "machine": machine_info(), "load_average": list(os.getloadavg()), "command": " ".join(sys.argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return rows


def train(data: str, model: Path, out: Path, sets: list[str]) -> None:
    if (model / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "app", "bench", str(DATA[data]), "--detector", "patchcore", "--device", "cpu", "-q",
           "--runtime", "torch", "--precision", "float32", "--save-model", str(model), "--json", str(out)]
    for s in sets:
        cmd += ["--set", s]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def row(res: dict, base: dict | None) -> dict:
    m, t = res["metrics"], res["timing"]
    load = res.get("load_average", {})
    return {
        "lever": res["lever"], "runtime": f"{res['runtime']['runtime']} {res['runtime']['precision']}",
        "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
        "delta_image_auroc": None if base is None else m["image_auroc"] - base["metrics"]["image_auroc"],
        "images_per_second": t["score_images_per_second"],
        "cpu_ms_per_image": 1000 * t["score_cpu_seconds"] / res["n_test"],
        "peak_rss_mb": t["peak_rss_mb"], "load_before": load.get("before", [None])[0],
        "load_after": load.get("after", [None])[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, of: {', '.join(LEVERS)}")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "runtimes")
    ap.add_argument("--models", type=Path, default=Path("/tmp/ai-runtime-models"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="patchcore settings to train with")
    ap.add_argument("--tag", default="defaults", help="name of this set of settings in the file names")
    ap.add_argument("--threads", type=int, help="torch threads in each child (default: torch's own)")
    ap.add_argument("--backbone", type=Path, metavar="MODEL",
                    help="time the network alone per lever (one batch of 8 working frames) for this saved model")
    ap.add_argument("--one", nargs=3, metavar=("DATA", "MODEL", "LEVER"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]), args.one[2], args.json, args.set, args.threads)
        return 0
    levers = [x for x in args.levers.split(",") if x]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        ap.error(f"unknown lever(s) {', '.join(unknown)}")
    if args.backbone:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        backbone(args.backbone, args.json or args.out / f"backbone-{args.tag}.json", levers)
        return 0
    summary: dict[str, list[dict]] = {}
    for data in args.data:
        model = args.models / f"{data}-{args.tag}"
        train(data, model, args.out / f"{data}-{args.tag}-train.json", args.set)
        results = []
        for lever in levers:
            out = args.out / f"{data}-{args.tag}-{lever}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", data, str(model), lever, "--json", str(out)]
            for s in args.set:
                cmd += ["--set", s]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            print("lever:", lever, flush=True)
            # OMP_NUM_THREADS also pins faiss's and OpenBLAS's threads, not only torch's
            env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
            done = subprocess.run(cmd, cwd=REPO, env=env)
            if done.returncode != 0:
                print(f"  {lever} failed (exit {done.returncode})", flush=True)
                continue
            results.append(json.loads(out.read_text()))
        base = next((r for r in results if r["lever"] == "torch-fp32"), None)
        summary[data] = [row(r, base) for r in results]
    for data, rows in summary.items():
        print(f"\n{data} ({args.tag})")
        print(f"{'lever':16s} {'runtime':18s} {'image AUROC':>11s} {'change':>8s} {'pixel':>7s} {'img/s':>7s} "
              f"{'CPU ms/img':>10s} {'RSS MB':>7s} {'load':>9s}")
        for r in rows:
            d = "" if r["delta_image_auroc"] is None else f"{r['delta_image_auroc']:+.4f}"
            print(f"{r['lever']:16s} {r['runtime']:18s} {r['image_auroc']:11.4f} {d:>8s} {r['pixel_auroc']:7.4f} "
                  f"{r['images_per_second']:7.1f} {r['cpu_ms_per_image']:10.1f} {r['peak_rss_mb']:7.0f} "
                  f"{r['load_before']:4.1f}/{r['load_after']:4.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"summary-{args.tag}.json"
    # a rerun of some data sets keeps the others' rows of the same tag
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    path.write_text(json.dumps({**earlier, **summary}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
