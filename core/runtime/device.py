"""Device choice: ``auto`` takes CUDA when present, else the CPU."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    pass


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but no CUDA GPU is available here (use --device cpu or auto)")
        return torch.device(name)
    raise DeviceError(f"unknown device '{name}' (choose auto, cpu or cuda)")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _cpuinfo(text: str | None = None) -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo`` (or ``text``); ("", set()) elsewhere."""
    if text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                text = fh.read(65536)
        except OSError:
            return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def machine_info(device: torch.device | None = None, cpuinfo: str | None = None) -> dict[str, object]:
    """What a benchmark ran on, for its JSON: CPU model, logical CPUs, torch threads, the CPU's
    vector capability as torch dispatches it, whether it has bfloat16 instructions, and the GPU.

    Our machines are not all alike (2-core EPYCs with AVX2 only on one day, with AVX-512 BF16 on
    another), and a lever such as bf16 autocast runs on native instructions on one and is emulated
    on the other: a row's speed is only comparable with the machine named (docs/benchmarks.md,
    "CPU levers").
    """
    import os
    import platform

    model, flags = _cpuinfo(cpuinfo)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    gpu = None
    if device is not None and device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": capability,
        "bf16_instructions": bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None,
        "gpu": gpu,
        "torch": torch.__version__,
    }


def describe_machine(info: dict[str, object]) -> str:
    """One line of :func:`machine_info` (or a JSON's ``machine``): ``AMD EPYC, 2 logical CPUs,
    2 torch threads, AVX512, bf16 instructions``; what a record lacks is left out."""
    parts = [str(info.get("cpu") or "unknown CPU"), f"{info.get('logical_cpus')} logical CPUs",
             f"{info.get('torch_threads')} torch threads"]
    if info.get("cpu_capability"):
        parts.append(str(info["cpu_capability"]))
    if info.get("bf16_instructions") is not None:
        parts.append("bf16 instructions" if info["bf16_instructions"] else "no bf16 instructions")
    return ", ".join(parts)
