"""Micro-benchmark: which CPU levers pay for the paper detectors' heavy loops.

Times one training step (forward, backward, optimizer step) of the convolutional paper models —
the VQ-VAE and the score U-Net — at their papers' working sizes (256 / 192 px, batch 8) and on
crops (``train_crop``, 64 px), and one batch of frozen-backbone inference (EfficientNet-Lite0,
the offline backbone of differnet, sanf and patchcore) under each lever:

- ``default``: float32, contiguous (NCHW) tensors, the process's thread count;
- ``channels_last``: model and inputs in NHWC memory format (oneDNN prefers it for convolutions);
- ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``channels_last+bf16``: both (not in the default set: opt in with ``--levers``);
- ``compile``: ``torch.compile(model)`` (the first call, which compiles, is not timed);
- ``threads=1``: one intra-op thread instead of all.

Each row is the median of ``--repeat`` timed runs after ``--warmup`` untimed ones; the JSON keeps
every run. On a GPU (``--device cuda``) the device is synchronised before the clock stops.

    .venv/bin/python benchmarks/bench_cpu_levers.py [--json OUT.json] [--repeat 5] [--only vqvae,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402

LEVERS = ("default", "channels_last", "bf16", "compile", "threads=1")
KNOWN_LEVERS = (*LEVERS, "channels_last+bf16")


def _vqvae(size: int):
    from core.detectors.vqvae.detector import VQVAEConfig, VQVAEDetector
    from core.detectors.vqvae.torch_model import VQVAE, vqvae_loss

    det = VQVAEDetector(VQVAEConfig(image_size=256), device="cpu")
    model = VQVAE(det._shape(3))

    def loss(m, x):
        return vqvae_loss(m(x), x, 0.25)[0]

    return model, loss, (8, 3, size, size), True


def _score_net(size: int):
    from core.detectors.score_resilience.detector import ScoreResilienceConfig
    from core.detectors.score_resilience.torch_model import ScoreNet, dsm_loss

    cfg = ScoreResilienceConfig(image_size=192)
    model = ScoreNet(cfg.shape(3))

    def loss(m, x):
        k = torch.full((x.shape[0],), 0.5)
        return dsm_loss(m, x, k, torch.randn_like(x), cfg.sigma)

    return model, loss, (8, 3, size, size), True


def _efficientnet(size: int):
    from core.detectors.differnet.torch_model import build_backbone
    from core.io import weights as store

    backbone, *_ = build_backbone("efficientnet-lite0", store.resolve("efficientnet-lite0-imagenet").path)
    return backbone.eval(), None, (8, 3, size, size), False


CASES = {
    "vqvae-train-256": lambda: _vqvae(256),
    "vqvae-train-crop64": lambda: _vqvae(64),
    "score-net-train-192": lambda: _score_net(192),
    "score-net-train-crop64": lambda: _score_net(64),
    "efficientnet-lite0-infer-224": lambda: _efficientnet(224),
    "efficientnet-lite0-infer-448": lambda: _efficientnet(448),
}


def time_case(name: str, lever: str, device: torch.device, warmup: int, repeat: int) -> list[float]:
    model, loss_fn, shape, train = CASES[name]()
    model = model.to(device)
    x = torch.rand(shape, device=device)
    if lever in ("channels_last", "channels_last+bf16"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run_model = torch.compile(model) if lever == "compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if lever.endswith("bf16") else contextlib.nullcontext()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4) if train else None
    threads = torch.get_num_threads()
    if lever == "threads=1":
        torch.set_num_threads(1)

    def one() -> None:
        if train:
            model.train()
            with autocast:
                loss = loss_fn(run_model, x)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast:
                run_model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        for _ in range(warmup):
            one()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            one()
            times.append(time.perf_counter() - t0)
        return times
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="comma-separated case names (default all)")
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated levers (default {','.join(LEVERS)})")
    ap.add_argument("--json", type=Path, help="write every run here")
    args = ap.parse_args()
    device = torch.device(args.device)
    cases = [c for c in args.only.split(",") if c] or list(CASES)
    levers = [lv for lv in args.levers.split(",") if lv]
    unknown = sorted(set(levers) - set(KNOWN_LEVERS)) + sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown lever or case {', '.join(unknown)}: levers {', '.join(KNOWN_LEVERS)}; cases {', '.join(CASES)}")
    print(f"# CPU levers: {machine()}")
    print(f"{'case':<30} {'lever':<14} {'median s':>9} {'vs default':>10}")
    out = {"machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    for case in cases:
        base = None
        for lever in levers:
            try:
                times = time_case(case, lever, device, args.warmup, args.repeat)
            except Exception as exc:  # a lever that does not work here is a result too
                print(f"{case:<30} {lever:<14} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                out["rows"].append({"case": case, "lever": lever, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            med = statistics.median(times)
            base = med if lever == "default" else base
            rel = f"{base / med:.2f}x" if base else ""
            print(f"{case:<30} {lever:<14} {med:>9.3f} {rel:>10}", flush=True)
            out["rows"].append({"case": case, "lever": lever, "median_s": med, "times_s": times})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
