"""``export-model`` and ``scan --runtime`` / ``bench --runtime`` (issue 28): the exported model
scans through the same engine path into the same files, a tampered export is refused like a
tampered model folder, and what cannot run says why in one line (exit 2)."""

from __future__ import annotations

import csv
import json

import pytest

from app.cli import main
from core.detectors.runtimes import runtime_available
from tests.core.test_bench import FAST, make_tree

PC = ["--set", "backbone=tiny-random", "--set", "image_size=32", "--set", "batch_size=4", "--set", "coreset_ratio=0.5",
      "--set", "blur_sigma=1"]
PG = ["--set", "image_size=16", "--set", "blur_sigma=1"]


def needs(runtime: str):
    ok, why = runtime_available(runtime)
    return pytest.mark.skipif(not ok, reason=why)


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("anomaly-inspector:")]


@pytest.fixture
def model(tiny_parts, tmp_path):
    m = tmp_path / "model"
    assert main(["train", str(tiny_parts / "good"), "--detector", "patchcore", "--model", str(m), *PC, "-q",
                 "--no-self-check"]) == 0
    return m


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs("onnx")), pytest.param("openvino", marks=needs("openvino"))])
def test_exported_scan_writes_the_same_files_as_the_torch_scan(fmt, model, tiny_parts, tmp_path):
    exported = tmp_path / f"exported-{fmt}"
    assert main(["export-model", str(model), "--format", fmt, "--out", str(exported), "-q"]) == 0
    torch_out, ex_out = tmp_path / "torch", tmp_path / "exported-scan"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "patchcore", "--model", str(model),
                 "--runtime", "torch", "--precision", "float32", "--out", str(torch_out), "-q"]) == 0
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "patchcore", "--model", str(exported),
                 "--precision", "float32", "--out", str(ex_out), "-q"]) == 0
    assert sorted(p.name for p in torch_out.iterdir()) == sorted(p.name for p in ex_out.iterdir())
    assert sorted(p.name for p in (torch_out / "heatmaps").iterdir()) == sorted(p.name for p in (ex_out / "heatmaps").iterdir())
    a, b = rows(torch_out / "results.csv"), rows(ex_out / "results.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["flagged"] for r in a] == [r["flagged"] for r in b]
    for x, y in zip(a, b):
        assert float(y["score"]) == pytest.approx(float(x["score"]), rel=1e-4)
    assert (torch_out / "flagged.txt").read_text() == (ex_out / "flagged.txt").read_text()


@needs("onnx")
def test_scan_runtime_onnx_on_a_model_folder_exports_on_the_fly(model, tiny_parts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "patchcore", "--model", str(model),
                 "--runtime", "onnx", "--out", str(out)]) == 0
    assert "exported the model for onnx float32" in capsys.readouterr().err
    assert len(rows(out / "results.csv")) == 8


@needs("onnx")
def test_scan_train_with_runtime(tiny_parts, tmp_path):
    out = tmp_path / "out"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"),
                 *PG, "--runtime", "onnx", "--out", str(out), "-q"]) == 0
    assert len(rows(out / "results.csv")) == 8


@needs("onnx")
def test_tampered_export_is_refused_like_a_tampered_model(model, tiny_parts, tmp_path, capsys):
    exported = tmp_path / "exported"
    assert main(["export-model", str(model), "--format", "onnx", "--out", str(exported), "-q"]) == 0
    graph = exported / "features.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])  # truncated
    capsys.readouterr()
    code = main(["scan", str(tiny_parts / "batch"), "--detector", "patchcore", "--model", str(exported),
                 "--out", str(tmp_path / "out"), "-q"])
    lines = err_lines(capsys)
    assert code == 2 and len(lines) == 1 and "features.onnx" in lines[0] and "corrupt export" in lines[0]
    assert not (tmp_path / "out").exists()


def test_detector_that_cannot_be_exported_says_why(tiny_parts, tmp_path, capsys):
    m = tmp_path / "svm"
    assert main(["train", str(tiny_parts / "good"), "--detector", "ocsvm", "--model", str(m), "--set",
                 "image_size=16", "-q", "--no-self-check"]) == 0
    capsys.readouterr()
    code = main(["export-model", str(m), "--format", "onnx", "--out", str(tmp_path / "x")])
    lines = err_lines(capsys)
    assert code == 2 and len(lines) == 1 and "ocsvm cannot be exported" in lines[0]
    assert not (tmp_path / "x").exists()


def test_usage_errors_are_one_line(model, tiny_parts, tmp_path, capsys, monkeypatch):
    batch, o = str(tiny_parts / "batch"), str(tmp_path / "o")
    cases = [
        (["scan", batch, "--detector", "patchcore", "--model", str(model), "--out", o, "--runtime", "torch",
          "--precision", "int8"], "int8"),
        (["scan", batch, "--detector", "patchcore", "--model", str(model), "--out", o, "--runtime", "onnx",
          "--precision", "bfloat16"], "bfloat16"),
        (["scan", batch, "--detector", "pixel-gaussian", "--train", str(tiny_parts / "good"), "--out", o,
          "--precision", "int8"], "export-model --precision int8"),
        (["export-model", str(model), "--format", "onnx", "--out", str(tmp_path / "q"), "--precision", "int8"],
         "--calibration"),
        (["export-model", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(tmp_path / "q")], "not found"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        lines = err_lines(capsys)
        assert len(lines) == 1 and words in lines[0], (argv, lines)
        assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    for argv in (["export-model", str(model), "--format", "openvino", "--out", str(tmp_path / "q")],
                 ["scan", batch, "--detector", "patchcore", "--model", str(model), "--runtime", "openvino",
                  "--out", o]):
        capsys.readouterr()
        assert main(argv) == 2
        lines = err_lines(capsys)
        assert len(lines) == 1 and "anomaly-inspector[openvino]" in lines[0], lines


@needs("onnx")
def test_bench_runtime_prints_and_records_what_ran(tmp_path, capsys):
    tree = make_tree(tmp_path / "mvtec")
    out = tmp_path / "b.json"
    sets = [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]
    assert main(["bench", str(tree), "--detector", "pixel-gaussian", "--device", "cpu", *sets, "--runtime", "onnx",
                 "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "runtime" in printed and "onnx float32" in printed
    res = json.loads(out.read_text())
    assert res["runtime"]["runtime"] == "onnx" and res["runtime"]["precision"] == "float32"
    assert res["runtime"]["convert_seconds"] is not None
    assert res["metrics"]["image_auroc"] == pytest.approx(1.0)
