"""Helpers shared by the micro-benchmarks (not a test module; run the bench_*.py scripts)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("AI_DATASETS", REPO.parent / "shared" / "datasets"))


def machine() -> str:
    import torch

    from core.runtime.device import describe_machine, machine_info

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{describe_machine(machine_info())}, torch {torch.__version__}, {gpu}, Python {platform.python_version()}"


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn`` (after one untimed warm-up call)."""
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(seconds: list[float], n_items: int) -> str:
    """'median ms/item, items/s (min..max over repeats)'."""
    med = statistics.median(seconds)
    return (f"{1000 * med / n_items:8.2f} ms/img  {n_items / med:8.1f} img/s  "
            f"(best {n_items / min(seconds):.1f}, worst {n_items / max(seconds):.1f})")


def test_sample(dataset: Path, every: int, n: int) -> list[Path]:
    """Every ``every``-th test image of ``dataset`` (its layout's order), at most ``n`` of them."""
    from core.data.layouts import load_dataset

    return [s.path for s in load_dataset(dataset).test[::every][:n]]


def write_report(path: Path | None, doc: dict) -> None:
    """``doc`` as JSON at ``path`` (nothing without one), with the machine, its load average and
    the command line that made it."""
    if path is None:
        return
    import json
    import sys

    from core.runtime.device import machine_info

    doc = {**doc, "machine": machine_info(), "load_average": list(os.getloadavg()), "command": " ".join(sys.argv)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
