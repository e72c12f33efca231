"""Who runs a detector's network: PyTorch, ONNX Runtime or OpenVINO, at a precision.

A detector that can be exported names its network (:class:`Graph`: a module, an example input,
the axes that may change); everything else it does when scoring (pre-processing, the
nearest-neighbour search, score rules, maps) stays in its one Python implementation. A runtime
swaps only that forward pass (:meth:`core.detectors.base.Detector.use_runner`), so the scores,
maps and flags of every runtime come from the same code and agree by construction, within the
float rounding of the network itself (tests/core/test_runtimes.py checks it for every exportable
detector and both runtimes).

Runtimes (``--runtime``):

- ``torch``: the module itself, eagerly; ``bfloat16`` runs it under CPU autocast.
- ``onnx``: ONNX Runtime (the ``onnx`` extra) on a graph exported with ``torch.onnx``.
- ``openvino``: OpenVINO (the ``openvino`` extra) on that graph converted to its IR. OpenVINO's
  own default on a CPU with bf16 instructions is bf16; here the precision is always asked for
  explicitly, so ``float32`` means float32.

Precisions (``--precision``): ``float32``; ``bfloat16`` where the CPU has bf16 instructions
(emulated, and slower, elsewhere); ``int8``: a graph quantised after training (static,
per-channel weights) on good images only, for ``onnx`` and ``openvino``. ``auto`` is
:func:`default_runtime` and :func:`default_precision`; what was measured for each is in
docs/benchmarks.md ("Runtimes").
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RUNTIMES = ("torch", "onnx", "openvino")
PRECISIONS = ("float32", "bfloat16", "int8")
#: The pyproject extra that brings each runtime (named in the message when it is missing).
EXTRAS = {"onnx": "onnx", "openvino": "openvino"}
_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}
#: ONNX opset of the exported graphs (ONNX Runtime >= 1.16 and OpenVINO >= 2023 read it).
OPSET = 17


class RuntimeUnavailable(RuntimeError):
    """A runtime or precision that cannot run here; the message says what to install or choose."""


class ExportError(ValueError):
    """A detector (or a setting of it) that cannot be exported; the message says why."""


def install_hint(runtime: str) -> str:
    return f"pip install 'anomaly-inspector[{EXTRAS[runtime]}]'"


def runtime_available(runtime: str) -> tuple[bool, str]:
    """(usable here, why not) for a runtime name."""
    if runtime not in RUNTIMES:
        return False, f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})"
    if runtime == "torch":
        return True, ""
    module = _MODULES[runtime]
    if importlib.util.find_spec(module) is None:
        return False, f"the {runtime} runtime needs {module}, which is not installed: {install_hint(runtime)}"
    return True, ""


def check_runtime(runtime: str) -> None:
    ok, why = runtime_available(runtime)
    if not ok:
        raise RuntimeUnavailable(why)


def bf16_instructions() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); without them bf16 is
    emulated and slower than float32 (docs/benchmarks.md, "bf16 autocast: which machine")."""
    from core.runtime.device import machine_info

    return bool(machine_info().get("bf16_instructions"))


#: ``ANOMALY_INSPECTOR_RUNTIME`` / ``ANOMALY_INSPECTOR_PRECISION`` override what ``auto`` picks on
#: this machine (``torch`` / ``float32``: the scores of earlier versions, to the last digit).
RUNTIME_ENV = "ANOMALY_INSPECTOR_RUNTIME"
PRECISION_ENV = "ANOMALY_INSPECTOR_PRECISION"
#: What ``auto`` prefers, fastest first (docs/benchmarks.md, "Runtimes": the network of the
#: default patchcore took 4.3 ms per image in OpenVINO bf16, 8.5 in OpenVINO float32, 12.0 in
#: ONNX Runtime and 28.8 in torch, one thread, with image AUROC within 0.005 of float32).
PREFERENCE = ("openvino", "onnx", "torch")


def default_runtime() -> str:
    """The runtime ``auto`` picks for a detector that can be exported: the fastest one installed
    here (:data:`PREFERENCE`), or :data:`RUNTIME_ENV`. Nothing extra installed: torch, as before."""
    forced = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if forced in RUNTIMES and runtime_available(forced)[0]:
        return forced
    return next(r for r in PREFERENCE if runtime_available(r)[0])


def default_precision(runtime: str, device: torch.device | None = None) -> str:
    """The precision ``auto`` picks: bfloat16 for OpenVINO where the CPU computes it natively
    (AVX-512 BF16 or AMX: the fastest lever that kept image AUROC within 0.005 of float32 on bottle
    and MTD, docs/benchmarks.md, "Runtimes"); float32 everywhere else: torch (its bf16 autocast is
    offered, not the default, so that a user who installs nothing extra gets the scores of earlier
    versions), ONNX Runtime (no bf16 CPU kernels), a CPU without bf16 instructions (emulated bf16
    is slower than float32), a GPU. :data:`PRECISION_ENV` overrides it."""
    if device is not None and device.type != "cpu":
        return "float32"
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced in ("float32", "bfloat16"):
        return "float32" if forced == "bfloat16" and runtime == "onnx" else forced
    if runtime == "openvino" and bf16_instructions():
        return "bfloat16"
    return "float32"


def check_precision(runtime: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"unknown precision '{precision}' (known: auto, {', '.join(PRECISIONS)})")
    if precision == "bfloat16" and runtime == "onnx":
        raise RuntimeUnavailable("ONNX Runtime has no bfloat16 CPU kernels: use --runtime openvino or torch for "
                                 "bfloat16, or --precision float32")
    if precision == "int8" and runtime == "torch":
        raise RuntimeUnavailable("int8 runs on an exported, quantised graph: --runtime onnx or openvino")


def default_threads() -> int:
    """Intra-op threads of a runtime's session: as many as torch uses (the cores by default)."""
    return max(1, torch.get_num_threads())


# ----------------------------------------------------------------------------- the graph
@dataclass
class Graph:
    """One network of a detector as it is exported: ``module(*example)`` returns one tensor.

    ``frames`` says which input sizes the graph is valid for, checked before each run:
    ``{"multiple": m}`` (height and width multiples of ``m``: the backbone's padding is the
    same for all of them) or ``{"fixed": [h, w]}``. ``calibration`` yields input batches (numpy
    arrays, one per input) of good images, for int8 quantisation. ``checks``: inputs on which the
    exported graph is compared with the module at export time (``example`` when empty), covering
    the input sizes it will see. ``info``: what the detector needs to read back (recorded in
    ``export.json``).
    """

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    output: str
    dynamic: dict[str, dict[int, str]]
    frames: dict[str, Any] = field(default_factory=dict)
    calibration: Callable[[], Iterable[tuple[np.ndarray, ...]]] | None = None
    checks: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What ``export.json`` records of the graph (besides its files)."""
        return {"inputs": list(self.inputs), "output": self.output, "frames": self.frames,
                "example_shapes": [list(t.shape) for t in self.example], **self.info}


def check_frame(frames: dict[str, Any], shape: Sequence[int], what: str) -> None:
    """Raise ValueError when an input of ``shape`` (..., H, W) is outside what the graph is valid for."""
    h, w = int(shape[-2]), int(shape[-1])
    if "multiple" in frames:
        m = int(frames["multiple"])
        if h % m or w % m:
            raise ValueError(f"{what}: a {h} x {w} input is not a multiple of {m}, which this exported graph needs")
    elif "fixed" in frames and [h, w] != [int(v) for v in frames["fixed"]]:
        raise ValueError(f"{what}: a {h} x {w} input; this exported graph takes {frames['fixed'][0]} x {frames['fixed'][1]}")


# ----------------------------------------------------------------------------- runners
class Runner:
    """Runs one network: ``runner(*inputs) -> output`` on CPU tensors."""

    runtime = "torch"

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def describe(self) -> str:
        return f"{self.runtime} {self.precision}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchRunner(Runner):
    """The torch module, eagerly; ``bfloat16``: under CPU autocast, the output back in float32."""

    def __init__(self, fn: Callable[..., torch.Tensor], precision: str = "float32") -> None:
        check_precision("torch", precision)
        super().__init__(precision)
        self.fn = fn

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.precision == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.fn(*inputs).float()
        return self.fn(*inputs)


class GraphRunner(Runner):
    """An exported graph, with the input sizes it is valid for checked before each run."""

    def __init__(self, precision: str, frames: dict[str, Any], name: str) -> None:
        super().__init__(precision)
        self.frames = frames
        self.name = name

    def _check(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if inputs and inputs[0].ndim == 4:
            check_frame(self.frames, inputs[0].shape, f"graph '{self.name}'")
        return [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in inputs]


class OnnxRunner(GraphRunner):
    runtime = "onnx"

    def __init__(self, path: Path, precision: str, frames: dict[str, Any], name: str,
                 threads: int | None = None) -> None:
        check_runtime("onnx")
        super().__init__(precision, frames, name)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between operators: on a shared machine it burns the cores others need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = self._check(inputs)
        out = self.session.run(None, dict(zip(self.input_names, arrays)))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


class OpenVINORunner(GraphRunner):
    runtime = "openvino"

    def __init__(self, path: Path, precision: str, frames: dict[str, Any], name: str,
                 threads: int | None = None) -> None:
        check_runtime("openvino")
        super().__init__(precision, frames, name)
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                  "INFERENCE_NUM_THREADS": int(threads or default_threads()), "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._local = threading.local()  # one infer request per calling thread

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = self._check(inputs)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(dict(enumerate(arrays)))
        # a copy: the request reuses its output buffer on the next call
        return torch.from_numpy(np.array(result[0], dtype=np.float32, copy=True))


def make_runner(runtime: str, precision: str, path: Path, frames: dict[str, Any], name: str,
                threads: int | None = None) -> GraphRunner:
    cls = {"onnx": OnnxRunner, "openvino": OpenVINORunner}[runtime]
    return cls(path, precision, frames, name, threads)


# ----------------------------------------------------------------------------- export
def export_onnx(graph: Graph, path: Path) -> Path:
    """Write ``graph`` as an ONNX file (TorchScript exporter: it needs only torch)."""
    module = graph.module.eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the forward pass
        torch.onnx.export(module, graph.example, str(path), dynamo=False, input_names=list(graph.inputs),
                          output_names=[graph.output], dynamic_axes=graph.dynamic, opset_version=OPSET,
                          do_constant_folding=True)
    return path


def quantize_int8(onnx_path: Path, out_path: Path, graph: Graph, max_batches: int = 64) -> Path:
    """Static int8 quantisation of an ONNX graph on ``graph.calibration`` (good images only):
    QDQ format, per-channel int8 weights, uint8 activations with min/max ranges. ONNX Runtime
    runs it as it is; OpenVINO reads its quantise / dequantise pairs as int8 operations."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise RuntimeUnavailable(f"int8 quantisation uses onnxruntime's tools, which are not installed: "
                                 f"{install_hint('onnx')}")
    if graph.calibration is None:
        raise ExportError("int8 needs good images to calibrate on (--calibration GOOD_DIR)")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(graph.calibration())
    names = list(graph.inputs)
    count = [0]

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            if count[0] >= max_batches:
                return None
            item = next(batches, None)
            if item is None:
                return None
            count[0] += 1
            return dict(zip(names, item))

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)
        for extra in out_path.parent.glob("*.onnx.data"):
            extra.unlink(missing_ok=True)
    if count[0] == 0:
        raise ExportError("int8 needs good images to calibrate on; none could be read")
    return out_path


def to_openvino(onnx_path: Path, xml_path: Path) -> list[Path]:
    """Convert an ONNX graph to OpenVINO IR (``.xml`` + ``.bin``), weights kept in float32."""
    check_runtime("openvino")
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return [xml_path, xml_path.with_suffix(".bin")]

