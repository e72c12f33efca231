"""Exported models agree with the engine (issue 28): every exportable detector, tiny, on ONNX
Runtime and OpenVINO, against the torch model that was exported: scores within 1e-4 relative,
maps within 1e-3 of the batch's map scale, the same flags at the saved threshold. Also: the
exported folder's manifest (tampered, truncated, partly copied folders are refused), the graph's
input sizes, the one-line refusal of detectors that cannot be exported, the missing extra."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.base import Detector
from core.detectors.exporting import apply_runtime, export_model, load_exported
from core.detectors.registry import REGISTRY, create_detector, load_model
from core.detectors.runtimes import ExportError, RuntimeUnavailable, check_frame, runtime_available
from core.engine.workflows import train_detector
from core.io.checkpoint import CheckpointError
from core.io.colormap import robust_range
from tests.conftest import make_part
from tests.core.test_detectors import TINY

RUNTIMES = ["onnx", "openvino"]


def needs(runtime: str):
    ok, why = runtime_available(runtime)
    return pytest.mark.skipif(not ok, reason=why)


def runtime_param(runtime: str):
    return pytest.param(runtime, marks=needs(runtime), id=runtime)


def parts(n: int, seed: int, defect: bool = False, size: int = 32, width: int | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = make_part(rng, size=max(size, width or size), defect=defect)
        out.append(np.ascontiguousarray(img[:size, :width or size]))
    return out


#: Exportable settings beyond TINY: patchcore with non-square frames (resize=keep gives each
#: aspect its own frame, so the graph's height and width change) and the standardization.
VARIANTS = {
    "patchcore-keep": ("patchcore", {**TINY["patchcore"], "resize": "keep", "stage_weighting": "standardize"}),
    "patchcore-pad-tiles": ("patchcore", {**TINY["patchcore"], "resize": "pad", "tile_size": 40, "image_score": "top_mean"}),
}


def exportable() -> list[tuple[str, str, dict]]:
    out = []
    for name, cls in REGISTRY.items():
        if cls.graphs is not Detector.graphs:
            out.append((name, name, TINY[name]))
    return out + [(k, n, s) for k, (n, s) in VARIANTS.items()]


_TRAINED: dict[str, Detector] = {}


def trained(key: str, name: str, settings: dict) -> Detector:
    """A tiny trained detector with a calibrated threshold (cached per module run)."""
    if key not in _TRAINED:
        det = create_detector(name, settings, device="cpu")
        train_detector(det, ImageSource(parts(12, 0)), self_check=False)
        _TRAINED[key] = det
    return _TRAINED[key]


def batch() -> list[np.ndarray]:
    """Good and defective parts, square and not (the non-square ones exercise resize=keep)."""
    return (parts(3, 5) + parts(3, 6, defect=True) + parts(1, 7, size=48) + parts(1, 8, size=32, width=64)
            + parts(1, 9, size=64, width=32, defect=True))


def agree(ref: dict, got: dict, threshold: float | None) -> None:
    assert sorted(ref) == sorted(got)
    lo, hi = robust_range([r.anomaly_map for r in ref.values() if r.anomaly_map is not None]) if any(
        r.anomaly_map is not None for r in ref.values()) else (0.0, 1.0)
    scale = hi - lo
    for i in ref:
        a, b = ref[i].score, got[i].score
        assert abs(a - b) <= 1e-4 * max(abs(a), 1e-12), (i, a, b)
        if ref[i].anomaly_map is not None:
            assert got[i].anomaly_map.shape == ref[i].anomaly_map.shape
            assert np.abs(got[i].anomaly_map - ref[i].anomaly_map).max() <= 1e-3 * scale, i
        if threshold is not None:
            assert (a > threshold) == (b > threshold), (i, a, b, threshold)


@pytest.mark.parametrize("runtime", [runtime_param(r) for r in RUNTIMES])
@pytest.mark.parametrize("key,name,settings", exportable(), ids=[k for k, _, _ in exportable()])
def test_exported_model_agrees_with_the_engine(key, name, settings, runtime, tmp_path):
    det = trained(key, name, settings)
    images = ImageSource(batch())
    ref = det.score(images)
    report = export_model(det, tmp_path / "exported", runtime)
    assert report.checks and all(c["max_abs_deviation"] <= 1e-4 * max(1.0, c["max_abs_value"])
                                 for c in report.checks.values())
    ex = load_exported(tmp_path / "exported", precision="float32")
    assert ex.runtime == f"{runtime} float32"
    assert ex.threshold is not None and ex.threshold.value == det.threshold.value
    agree(ref, ex.score(images), det.threshold.value)
    # the engine's load_model takes an exported folder as it takes a model folder
    assert load_model(tmp_path / "exported").runtime.startswith(runtime)
    # and --runtime torch reads the same folder's model back as the torch model
    back = load_exported(tmp_path / "exported", runtime="torch", precision="float32")
    assert back.runtime == "torch float32"
    agree(ref, back.score(images), det.threshold.value)


@pytest.mark.parametrize("runtime", [runtime_param(r) for r in RUNTIMES])
def test_apply_runtime_exports_on_the_fly(runtime):
    det = trained("pixel-gaussian", "pixel-gaussian", TINY["pixel-gaussian"])
    images = ImageSource(batch())
    ref = det.score(images)
    on = apply_runtime(det, runtime, "float32")
    assert on is not det and on.runtime == f"{runtime} float32"
    agree(ref, on.score(images), det.threshold.value)
    assert det.runtime == "torch float32"  # the torch model is left as it was


def test_torch_bfloat16_is_a_precision_of_the_same_code():
    det = trained("patchcore", "patchcore", TINY["patchcore"])
    images = ImageSource(batch())
    ref = det.score(images)
    apply_runtime(det, "torch", "bfloat16")
    try:
        assert det.runtime == "torch bfloat16"
        got = det.score(images)
        assert sorted(got) == sorted(ref)
        assert all(np.isfinite(r.score) for r in got.values())
    finally:
        apply_runtime(det, "torch", "float32")
    assert det.score(images)[0].score == ref[0].score


@needs("onnx")
def test_int8_export_quantises_on_good_images(tmp_path):
    det = trained("patchcore", "patchcore", TINY["patchcore"])
    with pytest.raises(ExportError, match="calibrate"):
        export_model(det, tmp_path / "q", "onnx", "int8")
    report = export_model(det, tmp_path / "q", "onnx", "int8", calibration=parts(6, 3))
    doc = json.loads((tmp_path / "q" / "export.json").read_text())
    assert doc["precision"] == "int8" and doc["calibration_images"] == 6
    assert report.checks["features"]["max_abs_deviation"] > 0  # quantised: not the float graph
    ex = load_exported(tmp_path / "q")
    assert ex.runtime == "onnx int8"
    res = ex.score(ImageSource(batch()))
    assert all(np.isfinite(r.score) for r in res.values())
    with pytest.raises(RuntimeUnavailable, match="int8 only"):
        load_exported(tmp_path / "q", precision="float32")


def test_detectors_that_cannot_be_exported_say_why_in_one_line(tmp_path):
    for name, cls in REGISTRY.items():
        if cls.graphs is not Detector.graphs:
            continue
        det = create_detector(name, TINY[name], device="cpu")
        if not det.zero_shot:
            det.fitted = True  # the refusal comes before anything is read
        with pytest.raises(ExportError) as err:
            export_model(det, tmp_path / name, "onnx")
        text = str(err.value)
        assert "\n" not in text and name in text and "cannot be exported" in text, text
        assert not (tmp_path / name).exists()


# ----------------------------------------------------------------------------- the folder
@pytest.fixture
def exported(tmp_path) -> Path:
    ok, why = runtime_available("onnx")
    if not ok:
        pytest.skip(why)
    det = trained("patchcore", "patchcore", TINY["patchcore"])
    export_model(det, tmp_path / "exported", "onnx")
    return tmp_path / "exported"


def test_export_folder_holds_graph_model_threshold_and_manifest(exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["config.json", "export.json", "features.onnx", "weights.safetensors"]
    doc = json.loads((exported / "export.json").read_text())
    assert doc["format"] == "anomaly-inspector-export" and doc["runtime"] == "onnx" and doc["detector"] == "patchcore"
    assert set(doc["files"]) == {"config.json", "weights.safetensors", "features.onnx"}
    assert doc["graphs"]["features"]["frames"] == {"multiple": 4}  # tiny-random's deepest stride
    assert doc["threshold"]["value"] == json.loads((exported / "config.json").read_text())["threshold"]["value"]
    assert doc["preprocessing"]["settings"]["image_size"] == 32
    assert doc["colour_scale"]["colormap"] == "inferno"
    assert "working frames" in doc["preprocessing"]["network input"]["features"]
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert exported.stat().st_mode & 0o777 == 0o777 & ~mask  # not private like a temporary folder


def _flip(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


TAMPER = {
    "graph byte flipped": (lambda d: _flip(d / "features.onnx"), "does not match the checksum"),
    "graph truncated": (lambda d: (d / "features.onnx").write_bytes((d / "features.onnx").read_bytes()[:1000]),
                        "truncated or replaced"),
    "graph missing": (lambda d: (d / "features.onnx").unlink(), "has no features.onnx"),
    "weights truncated": (lambda d: (d / "weights.safetensors").write_bytes(b"x"), "truncated or replaced"),
    "config edited": (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace(
        '"blur_sigma": 1.0', '"blur_sigma": 2.0')), "truncated or replaced|does not match"),
    "export.json not JSON": (lambda d: (d / "export.json").write_text("{"), "not valid JSON"),
    "export.json foreign": (lambda d: (d / "export.json").write_text("{}"), "format marker"),
    "manifest drops the graph": (lambda d: _edit(d, lambda doc: doc["files"].pop("features.onnx")),
                                 "does not list"),
    "manifest path escapes": (lambda d: _edit(d, lambda doc: doc["files"].update({"../x": doc["files"]["config.json"]})),
                              "not a plain name"),
    "runtime unknown": (lambda d: _edit(d, lambda doc: doc.update(runtime="tensorrt")), "runtime 'tensorrt'"),
    "frames removed": (lambda d: _edit(d, lambda doc: doc["graphs"]["features"].pop("frames")), "input sizes"),
    "graph a link to a device": (lambda d: ((d / "features.onnx").unlink(), (d / "features.onnx").symlink_to("/dev/zero")),
                                 "not a regular file"),
}


def _edit(folder: Path, change) -> None:
    doc = json.loads((folder / "export.json").read_text())
    change(doc)
    (folder / "export.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_or_truncated_export_is_refused_in_one_line(exported, case):
    tamper, message = TAMPER[case]
    tamper(exported)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(exported)
    assert "\n" not in str(err.value)


def test_a_graph_is_checked_against_the_input_sizes_it_takes():
    check_frame({"multiple": 16}, (1, 3, 224, 320), "g")
    with pytest.raises(ValueError, match="not a multiple of 16"):
        check_frame({"multiple": 16}, (1, 3, 224, 100), "g")
    with pytest.raises(ValueError, match="takes 64 x 64"):
        check_frame({"fixed": [64, 64]}, (1, 3, 64, 32), "g")


def test_export_replaces_an_earlier_export_but_not_other_folders(exported, tmp_path):
    det = trained("patchcore", "patchcore", TINY["patchcore"])
    export_model(det, exported, "onnx")  # an earlier export is replaced
    assert load_model(exported).runtime == "onnx " + load_model(exported).runtime.split()[-1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        export_model(det, other, "onnx")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_missing_extra_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    ok, why = runtime_available("openvino")
    assert not ok and "pip install 'anomaly-inspector[openvino]'" in why
    det = trained("pixel-gaussian", "pixel-gaussian", TINY["pixel-gaussian"])
    with pytest.raises(RuntimeUnavailable, match=r"anomaly-inspector\[openvino\]"):
        apply_runtime(det, "openvino", "float32")


@needs("onnx")
def test_onnx_runs_no_bfloat16(exported):
    with pytest.raises(RuntimeUnavailable, match="bfloat16"):
        load_exported(exported, precision="bfloat16")


def test_real_backbone_graph_follows_every_frame_shape(tmp_path):
    """EfficientNet-Lite pads like TensorFlow, computed from the input size in Python, which a
    traced graph bakes in; the export fixes the padding, so one graph serves every frame that is
    a multiple of 16 (resize=keep gives each aspect its own)."""
    ok, why = runtime_available("onnx")
    if not ok:
        pytest.skip(why)
    from core.detectors.backbones import fix_same_padding
    from core.detectors.patchcore.detector import PatchCoreDetector
    from core.detectors.runtimes import Graph, OnnxRunner, export_onnx

    ok, why = PatchCoreDetector.backbone_availability("efficientnet-lite0")
    if not ok:
        pytest.skip(why)
    det = create_detector("patchcore", {"backbone": "efficientnet-lite0", "image_size": 64}, device="cpu")
    model = det._build("efficientnet-lite0").eval()
    example = torch.rand(1, 3, 64, 64)
    fixed, count = fix_same_padding(model, example)
    assert count > 0

    class Raw(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, raw=True)

    g = Graph("features", Raw(fixed), (example,), ("images",), "features",
              {"images": {0: "b", 2: "h", 3: "w"}, "features": {0: "b", 1: "r", 2: "c"}}, {"multiple": 16})
    runner = OnnxRunner(export_onnx(g, tmp_path / "f.onnx"), "float32", g.frames, "features")
    for shape in [(64, 64), (48, 96), (112, 32), (160, 160)]:
        x = torch.rand(2, 3, *shape)
        with torch.inference_mode():
            want = model(x, raw=True)
            assert torch.equal(fixed(x, raw=True), want)  # the fixed padding is the dynamic one here
        got = runner(x)
        assert got.shape == want.shape, shape
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_exported_copy_of_shutil_is_still_valid(exported, tmp_path):
    """A folder copied whole (to the line PC) loads; the manifest has no absolute paths."""
    copy = tmp_path / "line-pc" / "model"
    shutil.copytree(exported, copy)
    assert load_model(copy).fitted


@needs("onnx")
def test_rows_of_another_runtime_are_never_mixed_in(exported):
    """A resumed scan and a session reuse rows only of the same model, settings and runtime: an
    exported graph's scores agree only within rounding, so its fingerprint differs; the torch
    float32 fingerprint is the one earlier versions wrote."""
    from core.engine.session_scan import score_settings
    from core.engine.stream_scan import run_fingerprint

    det = trained("patchcore", "patchcore", TINY["patchcore"])
    ex = load_exported(exported, precision="float32")
    assert "runtime" not in score_settings(det)
    assert score_settings(ex)["runtime"] == "onnx float32"
    assert run_fingerprint(det, det.threshold, True) != run_fingerprint(ex, ex.threshold, True)


def test_auto_is_the_fastest_installed_runtime_and_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """The default lever (docs/benchmarks.md, Runtimes): OpenVINO, else ONNX Runtime, else torch,
    for a detector that can be exported, on the CPU; bf16 for OpenVINO where the CPU has bf16
    instructions, float32 elsewhere and always for torch (nothing extra installed: the scores of
    earlier versions); the environment variables override both."""
    from core.detectors import exporting, runtimes

    monkeypatch.delenv(runtimes.PRECISION_ENV, raising=False)
    monkeypatch.delenv(runtimes.RUNTIME_ENV, raising=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    installed = {"openvino": True, "onnx": True}
    monkeypatch.setattr(runtimes, "runtime_available",
                        lambda r: (r == "torch" or installed.get(r, False), "" if installed.get(r) else "missing"))
    monkeypatch.setattr(runtimes, "bf16_instructions", lambda: True)
    assert [runtimes.default_precision(r, cpu) for r in ("torch", "openvino", "onnx")] == ["float32", "bfloat16",
                                                                                          "float32"]
    assert runtimes.default_precision("openvino", gpu) == "float32"
    pc = create_detector("patchcore", TINY["patchcore"], device="cpu")
    svm = create_detector("ocsvm", TINY["ocsvm"], device="cpu")
    assert exporting.resolve_runtime(pc, "auto") == "openvino"
    assert exporting.resolve_runtime(svm, "auto") == "torch"  # cannot be exported
    assert exporting.resolve_runtime(pc, "torch") == "torch"
    installed["openvino"] = False
    assert exporting.resolve_runtime(pc, "auto") == "onnx"
    assert exporting.resolve_runtime(pc, "auto", "bfloat16") == "torch"  # ONNX Runtime has no bf16
    installed["onnx"] = False
    assert exporting.resolve_runtime(pc, "auto") == "torch" and pc.runtime == "torch float32"
    installed.update(openvino=True, onnx=True)
    monkeypatch.setenv(runtimes.RUNTIME_ENV, "torch")
    assert exporting.resolve_runtime(pc, "auto") == "torch"
    monkeypatch.setenv(runtimes.PRECISION_ENV, "float32")
    assert runtimes.default_precision("openvino", cpu) == "float32"
    monkeypatch.setenv(runtimes.PRECISION_ENV, "bfloat16")
    assert pc.runtime == "torch bfloat16"
    monkeypatch.delenv(runtimes.PRECISION_ENV)
    monkeypatch.setattr(runtimes, "bf16_instructions", lambda: False)
    assert [runtimes.default_precision(r, cpu) for r in ("torch", "openvino", "onnx")] == ["float32"] * 3


@needs("openvino")
def test_auto_exports_an_exportable_model_on_the_fly(monkeypatch):
    from core.detectors import runtimes

    monkeypatch.delenv(runtimes.RUNTIME_ENV, raising=False)
    monkeypatch.setenv(runtimes.PRECISION_ENV, "float32")
    det = trained("pixel-gaussian", "pixel-gaussian", TINY["pixel-gaussian"])
    on = apply_runtime(det, "auto", "auto")
    assert on.runtime == "openvino float32"
    agree(det.score(ImageSource(batch())), on.score(ImageSource(batch())), det.threshold.value)
    assert apply_runtime(on, "auto", "auto") is on  # an exported model stays where it is


def test_bank_is_float32_reference_features_whatever_the_scoring_precision():
    a = create_detector("patchcore", TINY["patchcore"], device="cpu")
    b = create_detector("patchcore", TINY["patchcore"], device="cpu")
    apply_runtime(b, "torch", "bfloat16")
    a.fit(ImageSource(parts(6, 0)))
    b.fit(ImageSource(parts(6, 0)))
    assert torch.equal(a.bank, b.bank)
    assert b.runtime == "torch bfloat16"


@pytest.mark.parametrize("runtime", [runtime_param(r) for r in RUNTIMES])
def test_a_cross_calibrated_threshold_is_made_again_on_the_runtime(runtime, monkeypatch):
    """A kfold threshold comes from fold models' scores, not from held-out images: on a runtime
    its out-of-fold scores are made again, each fold model scoring through the same runtime (the
    features are the frozen backbone's, shared), not kept from torch float32."""
    from core.detectors.patchcore.detector import PatchCoreDetector
    from core.engine.workflows import recalibrate

    good = ImageSource(parts(12, 0))
    det = create_detector("patchcore", TINY["patchcore"], device="cpu")
    train_detector(det, good, calibration="kfold", self_check=False)
    converted = apply_runtime(det, runtime, "float32")
    assert converted is not det and converted.runtime.startswith(runtime)
    used = []
    real = PatchCoreDetector._net

    def spy(self, name, fn, x):
        used.append(name in self._runners)
        return real(self, name, fn, x)

    monkeypatch.setattr(PatchCoreDetector, "_net", spy)
    thr = recalibrate(converted, good)
    assert thr.scheme == det.threshold.scheme and thr.n_calibration == 12
    assert used and all(used)  # every fold model's features went through the runtime
    # same features within the runtimes' agreement: the threshold barely moves
    assert thr.value == pytest.approx(det.threshold.value, rel=1e-3)
