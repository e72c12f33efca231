"""Export a trained model for ONNX Runtime or OpenVINO, load it back, and choose a runtime.

- :func:`export_model` writes an exported folder (:mod:`core.io.exported`): the model's own
  ``config.json`` and ``weights.safetensors`` (settings, threshold, memory bank...), each of the
  detector's networks (:meth:`~core.detectors.base.Detector.graphs`) as an ONNX graph or OpenVINO
  IR, optionally quantised to int8 on good images, and ``export.json`` with the manifest. Every
  graph is run on the target runtime at export time against the torch module on the inputs it
  will see; a graph that does not agree is refused.
- :func:`load_exported` loads such a folder: the detector is rebuilt from ``config.json`` and the
  tensors, and its networks run through the runtime (no backbone weights needed); scoring is
  otherwise the detector's own Python code, so the outputs are the torch model's.
- :func:`apply_runtime` puts a loaded or trained detector on a runtime and precision (the CLI's
  ``--runtime`` / ``--precision``): torch in place, ONNX Runtime or OpenVINO by exporting it to a
  temporary folder first (seconds; ``export-model`` once avoids it).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.detectors.base import Detector
from core.detectors.runtimes import (
    RUNTIMES,
    ExportError,
    Graph,
    RuntimeUnavailable,
    check_precision,
    check_runtime,
    default_precision,
    default_runtime,
    export_onnx,
    make_runner,
    quantize_int8,
    to_openvino,
)
from core.io.checkpoint import CheckpointError, load_checkpoint
from core.io.colormap import COLORMAP_NAME
from core.io.exported import GRAPH_SUFFIXES, ExportFolder, read_export

__all__ = ["ExportReport", "apply_runtime", "export_model", "exportable", "load_exported", "resolve_precision",
           "resolve_runtime"]

#: Largest deviation of an exported float32 graph from the torch module, relative to the largest
#: output value, that export accepts (measured deviations are about 1e-6; docs/benchmarks.md).
AGREEMENT = 1e-4


@dataclass
class ExportReport:
    folder: Path
    runtime: str
    precision: str
    seconds: float
    #: per graph: largest absolute deviation from the torch module and the largest output value
    checks: dict[str, dict[str, float]] = field(default_factory=dict)


def _compare(graph: Graph, runner: Callable[..., torch.Tensor]) -> dict[str, float]:
    dev, top = 0.0, 0.0
    with torch.inference_mode():
        for inputs in graph.checks or [graph.example]:
            want = graph.module(*inputs).float()
            got = runner(*inputs).float()
            if got.shape != want.shape:
                raise ExportError(f"the exported graph '{graph.name}' gives {tuple(got.shape)} for an input of "
                                  f"{tuple(inputs[0].shape)}, the model {tuple(want.shape)}")
            dev = max(dev, float((got - want).abs().max()))
            top = max(top, float(want.abs().max()))
    return {"max_abs_deviation": dev, "max_abs_value": top, "inputs": len(graph.checks or [graph.example])}


def export_model(detector: Detector, out: str | os.PathLike, runtime: str, precision: str = "float32",
                 calibration: Sequence[np.ndarray] | None = None, source: str | None = None) -> ExportReport:
    """Export a trained ``detector`` to the folder ``out`` for ``runtime`` (``onnx`` or
    ``openvino``) at ``precision`` (``float32`` or ``int8``; int8 calibrates on the good images
    ``calibration``). Raises :class:`ExportError` (cannot be exported, or the graph disagrees),
    :class:`RuntimeUnavailable` (the extra is missing) and :class:`CheckpointError` (``out``)."""
    t0 = time.perf_counter()
    if runtime not in GRAPH_SUFFIXES:
        raise ExportError(f"cannot export for '{runtime}': choose one of {', '.join(GRAPH_SUFFIXES)}")
    if precision not in ("float32", "int8"):
        raise ExportError(f"an export is float32 or int8, not {precision} (bfloat16 is chosen when it runs: "
                          "--precision bfloat16 on scan)")
    if detector.zero_shot:
        detector.graphs()  # raises, saying why
    if not detector.fitted:
        raise ExportError(f"{detector.name} cannot be exported: it has not been trained")
    check_runtime(runtime)
    if precision == "int8" and not calibration:
        raise ExportError("int8 needs good images to calibrate on (--calibration GOOD_DIR)")
    graphs = detector.graphs(calibration if precision == "int8" else None)
    report = ExportReport(Path(out), runtime, precision, 0.0)
    target = ExportFolder(out)
    with target as tmp:
        detector.save(tmp)
        names = ["config.json", "weights.safetensors"]
        records: dict[str, dict[str, Any]] = {}
        for g in graphs:
            onnx_path = export_onnx(g, tmp / f"{g.name}.onnx")
            if precision == "int8":
                quantize_int8(onnx_path, tmp / f"{g.name}.int8.onnx", g)
                os.replace(tmp / f"{g.name}.int8.onnx", onnx_path)
            files = [onnx_path]
            if runtime == "openvino":
                files = to_openvino(onnx_path, tmp / f"{g.name}.xml")
                onnx_path.unlink()
            runner = make_runner(runtime, precision if precision == "int8" else "float32", files[0], g.frames, g.name)
            check = _compare(g, runner)
            if precision == "float32" and check["max_abs_deviation"] > AGREEMENT * max(1.0, check["max_abs_value"]):
                raise ExportError(f"the exported graph '{g.name}' does not agree with the model (largest deviation "
                                  f"{check['max_abs_deviation']:.3g} on values up to {check['max_abs_value']:.3g})")
            report.checks[g.name] = check
            records[g.name] = {"files": [f.name for f in files], **g.describe(), "check": check}
            names += [f.name for f in files]
        header = {
            "runtime": runtime,
            "precision": precision,
            "detector": detector.name,
            "source": source,
            "graphs": records,
            "preprocessing": {
                "reader": "core.data.images.read_image: float32 (H, W, C) in [0, 1], RGB or grey, EXIF orientation applied",
                "settings": detector.config.to_dict(),
                "network input": {g.name: g.info.get("input", "") for g in graphs},
            },
            "colour_scale": {"colormap": COLORMAP_NAME, "scale": "per scan: the lowest map value to the 99.9th "
                             "percentile of all the batch's map values (heatmap_scale.json)"},
            "threshold": detector.threshold.to_dict() if detector.threshold else None,
            "calibration_images": len(calibration) if precision == "int8" and calibration is not None else 0,
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        report.seconds = time.perf_counter() - t0
        header["export_seconds"] = round(report.seconds, 3)
        target.commit(header, names)  # only now does ``out`` change
    return report


def resolve_precision(runtime: str, precision: str, device: torch.device, exported: str | None = None) -> str:
    """``auto`` to the precision that runs (:func:`default_precision`; an int8 export runs int8),
    and a check that ``precision`` can run on ``runtime`` (and on an export of ``exported``)."""
    if exported == "int8":
        if precision not in ("auto", "int8"):
            raise RuntimeUnavailable(f"this export holds an int8 graph; it runs in int8 only (export the model "
                                     f"again for {precision})")
        return "int8"
    if precision == "auto":
        return default_precision(runtime, device)
    check_precision(runtime, precision)
    if precision == "int8":
        raise RuntimeUnavailable("int8 needs a graph quantised on good images: export-model --precision int8 "
                                 "--calibration GOOD_DIR (or bench, which calibrates on the training images)")
    return precision


def load_exported(folder: str | os.PathLike, runtime: str = "auto", precision: str = "auto",
                  device: str | torch.device = "cpu", threads: int | None = None) -> Detector:
    """Load an exported folder (checked against its manifest) on ``runtime`` (``auto``: the one
    it was exported for; ``torch`` reads its ``config.json`` and weights as a model folder)."""
    from core.detectors.registry import REGISTRY
    from core.runtime.device import resolve_device

    root = Path(folder)
    doc = read_export(root)
    runtime = doc["runtime"] if runtime == "auto" else runtime
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime '{runtime}' (known: auto, {', '.join(RUNTIMES)})")
    name = doc["detector"]
    if name not in REGISTRY:
        raise CheckpointError(f"{root} holds an export of detector '{name}', which this version does not know")
    dev = resolve_device(device)
    if runtime == "torch":
        det = REGISTRY[name].load(root, device=dev)
        return apply_runtime(det, "torch", precision)
    if runtime != doc["runtime"]:
        raise RuntimeUnavailable(f"{root} was exported for {doc['runtime']}, not {runtime}: export the model again "
                                 f"with --format {runtime}, or scan it with --runtime {doc['runtime']}")
    if dev.type != "cpu":
        raise RuntimeUnavailable(f"the {runtime} runtime runs on the CPU here: choose the device cpu or auto, not {device}")
    check_runtime(runtime)
    prec = resolve_precision(runtime, precision, dev, doc["precision"])
    header, tensors = load_checkpoint(root)
    if header["detector"] != name:
        raise CheckpointError(f"corrupt export: {root / 'export.json'} names '{name}', its config.json "
                              f"'{header['detector']}'")
    det = REGISTRY[name].from_saved(root, header, tensors, dev, graphs=doc["graphs"])
    for gname, g in doc["graphs"].items():
        try:
            runner = make_runner(runtime, prec, root / g["files"][0], g["frames"], gname, threads)
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # a graph file the runtime cannot read (it matched its checksum)
            raise CheckpointError(f"corrupt export: {runtime} cannot read {root / g['files'][0]} "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        det.use_runner(gname, runner)
    return det


def exportable(detector: Detector) -> bool:
    """Whether ``detector``'s class writes its networks as graphs (:meth:`Detector.graphs`)."""
    return type(detector).graphs is not Detector.graphs and not detector.zero_shot


def resolve_runtime(detector: Detector, runtime: str, precision: str = "auto") -> str:
    """``auto`` to the runtime that runs ``detector``: the one an exported model was loaded on;
    for a detector that can be exported and runs on the CPU, the fastest installed here
    (:func:`~core.detectors.runtimes.default_runtime`) that runs ``precision``; else torch."""
    if runtime != "auto":
        return runtime
    current = sorted({r.runtime for r in detector._runners.values()})
    if current:
        return current[0]
    if detector.device.type != "cpu" or not exportable(detector):
        return "torch"
    best = default_runtime()
    if precision == "bfloat16" and best == "onnx":  # ONNX Runtime has no bf16 kernels
        return "torch"
    return best


def apply_runtime(detector: Detector, runtime: str = "auto", precision: str = "auto",
                  calibration: Sequence[np.ndarray] | None = None, threads: int | None = None) -> Detector:
    """``detector`` running its networks on ``runtime`` at ``precision`` (``auto``:
    :func:`resolve_runtime`, :func:`~core.detectors.runtimes.default_precision`). torch changes
    ``detector`` in place; ``onnx`` / ``openvino`` export it to a temporary folder and return the
    exported model loaded back (int8 calibrates on the good images ``calibration``). A detector
    that already runs as an exported graph stays on its runtime."""
    current = {r.runtime for r in detector._runners.values()}
    if current and runtime in ("auto", *current) and precision in ("auto", *(r.precision for r in detector._runners.values())):
        return detector  # an exported model stays on the runtime and precision it was loaded for
    runtime = resolve_runtime(detector, runtime, precision)
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime '{runtime}' (known: auto, {', '.join(RUNTIMES)})")
    if runtime == "torch":
        if current:
            raise RuntimeUnavailable(f"this model runs as an exported {', '.join(sorted(current))} graph; load its "
                                     "folder with --runtime torch to run it in torch")
        if precision != "auto":
            resolve_precision("torch", precision, detector.device)
            if precision == "bfloat16" and detector.device.type != "cpu":
                raise RuntimeUnavailable("--precision bfloat16 applies to the CPU")
        detector.torch_precision = precision
        return detector
    if current:
        raise RuntimeUnavailable(f"this model already runs as an exported {', '.join(sorted(current))} graph")
    check_runtime(runtime)
    if precision not in ("auto", "int8"):
        resolve_precision(runtime, precision, detector.device)  # refuse bfloat16 on onnx before exporting
    with tempfile.TemporaryDirectory(prefix="anomaly-inspector-runtime-") as tmp:
        folder = Path(tmp) / "model"
        export_model(detector, folder, runtime, "int8" if precision == "int8" else "float32", calibration)
        loaded = load_exported(folder, runtime, precision, detector.device, threads)
    return loaded

