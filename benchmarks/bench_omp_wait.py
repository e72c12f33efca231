"""OpenMP's wait policy on a shared 2-core machine: how long the CPU hot spots of scoring take
when OpenMP's idle threads spin (the default) or sleep, with the machine idle or busy.

torch and faiss run their parallel regions on OpenMP thread pools; by default an idle thread
spins for a while before it sleeps. On a machine whose cores are busy with other work, the
spinning threads take the cores from the thread that has work, and a parallel region can take
several times longer than on one thread. Each policy is measured in a fresh process (the
policy is read when the OpenMP runtime starts):

    python benchmarks/bench_omp_wait.py --json docs/bench/omp-wait-idle-cpu.json
    python benchmarks/bench_omp_wait.py --load 4 --json docs/bench/omp-wait-loaded-cpu.json

``--load N`` starts N busy-looping processes for the duration (a busy machine). The cases:
``faiss``: exact search of 784 patch features (224 dims: one image) in a 20,000-patch bank;
``addmm``: the same distances as one torch matrix product; ``lite0``: EfficientNet-Lite0's
patch features of 8 images at 224 px (patchcore's backbone; skipped when its weights are not
installed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = {
    "default (spin)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
}
CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, {repo!r})
import numpy as np, faiss
repeat = {repeat}
wanted = {cases!r}
rng = np.random.default_rng(0)
bank = rng.normal(size=(20000, 224)).astype(np.float32)
q = rng.normal(size=(784, 224)).astype(np.float32)
index = faiss.IndexFlatL2(224)
index.add(bank)
cases = {{"faiss": lambda: index.search(q, 1)}}
if "addmm" in wanted or "lite0" in wanted:
    import torch
    b, qq = torch.from_numpy(bank), torch.from_numpy(q)
    bsq = (b * b).sum(1)
    cases["addmm"] = lambda: torch.addmm(bsq[None], qq, b.T, alpha=-2).min(1)
try:
    if "lite0" not in wanted:
        raise ImportError("not asked for")
    from core.detectors.backbones import BACKBONE_WEIGHTS
    from core.detectors.patchcore.torch_model import PatchFeatures
    from core.io import weights as store
    loc = store.locate(BACKBONE_WEIGHTS["efficientnet-lite0"])
    if loc is not None:
        feats = PatchFeatures("efficientnet-lite0", loc.path).eval()
        x = torch.rand(8, 3, 224, 224)
        def lite0():
            with torch.inference_mode():
                feats(x)
        cases["lite0"] = lite0
except Exception as exc:  # noqa: BLE001 - report and go on without it
    print("lite0 skipped:", exc, file=sys.stderr)
out = {{}}
for name, fn in cases.items():
    if name not in wanted:
        continue
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    out[name] = {{"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}}
print(json.dumps(out))
"""


def _spin() -> None:
    while True:
        pass


def measure(repeat: int, cases: tuple[str, ...] = ("faiss", "addmm", "lite0"),
            policies: tuple[str, ...] = tuple(POLICIES)) -> dict:
    results = {}
    for label in policies:
        env = POLICIES[label]
        child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        child_env.update(env)
        proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), repeat=repeat, cases=list(cases))], env=child_env,
                              capture_output=True, text=True, check=True)
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(label, {k: round(v["median_s"], 4) for k, v in results[label].items()}, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes to run beside it")
    ap.add_argument("--cases", default="faiss,addmm,lite0", help="comma-separated: faiss, addmm, lite0")
    ap.add_argument("--policies", type=int, default=len(POLICIES), help="measure the first N policies only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks._common import machine

    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    try:
        t0 = time.perf_counter()
        results = measure(args.repeat, tuple(args.cases.split(",")), tuple(POLICIES)[:args.policies])
        load = os.getloadavg()[0]
    finally:
        for p in spinners:
            p.terminate()
    doc = {"machine": machine(), "command": " ".join(sys.argv), "extra_load_processes": args.load,
           "load_average_1min": load, "seconds": time.perf_counter() - t0, "results": results,
           "speedup_vs_default": {label: {case: statistics.median([results["default (spin)"][case]["median_s"]])
                                          / r[case]["median_s"] for case in r}
                                  for label, r in results.items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
