"""Tests of ``anomaly-inspector bench`` (exit codes, table, JSON file)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("AI_DATASETS", REPO.parent / "shared" / "datasets"))
FAST = ["--set", "image_size=32", "--set", "blur_sigma=1", "--set", "batch_size=4", "--device", "cpu"]


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, img)
    assert ok
    data.tofile(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec AD root holding one category, ``part``."""
    rng = np.random.default_rng(1)
    base = tmp_path_factory.mktemp("mvtec")
    cat = base / "part"

    def good() -> np.ndarray:
        return np.clip(100 + rng.normal(0, 3, (32, 32, 3)), 0, 255).astype(np.uint8)

    for i in range(10):
        _write(cat / "train" / "good" / f"{i:03d}.png", good())
    for i in range(3):
        _write(cat / "test" / "good" / f"{i:03d}.png", good())
    for i in range(3):
        img, mask = good(), np.zeros((32, 32), np.uint8)
        img[8 + 4 * i:16 + 4 * i, 10:18] = (255, 0, 0)
        mask[8 + 4 * i:16 + 4 * i, 10:18] = 255
        _write(cat / "test" / "stain" / f"{i:03d}.png", img)
        _write(cat / "ground_truth" / "stain" / f"{i:03d}_mask.png", mask)
    return base


def test_bench_writes_json_and_table(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "b.json"
    rc = main(["bench", str(root / "part"), "--detector", "pixel-gaussian", "--json", str(out), *FAST])
    assert rc == 0
    captured = capsys.readouterr()
    assert "image AUROC" in captured.out and "pixel AUROC" in captured.out and "images/s" in captured.out
    assert "bench:" in captured.err  # progress goes to stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    assert set(res) == {"detector", "dataset", "category", "device", "config", "n_train", "n_test", "batch",
                        "metrics", "groupings", "timing", "training", "self_check", "auto", "runtime", "machine",
                        "version"}
    assert "machine" in captured.out
    # pixel-gaussian self-checks by default: the synthetic defects' AUROC beside the real one
    assert 0.0 <= res["self_check"]["auroc"] <= 1.0 and res["self_check"]["n_synthetic"] > 0
    assert "self-check AUROC" in captured.out and res["auto"] is None
    assert res["groupings"] is None  # a trained detector's batch is not grouped
    assert res["category"] == "part" and res["device"] == "cpu" and res["n_test"] == 6
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert math.isfinite(res["metrics"][key])
    assert res["timing"]["peak_gpu_mb"] is None


def test_bench_root_with_one_category_and_quiet(root: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["bench", str(root), "--detector", "pixel-gaussian", "--max-test", "4", "-q", *FAST])
    assert rc == 0
    captured = capsys.readouterr()
    assert "category part" in captured.out
    assert captured.err == ""


def test_bench_detector_without_maps_shows_na(root: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["bench", str(root), "--detector", "ocsvm", "--set", "image_size=8", "--device", "cpu", "-q"])
    assert rc == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pixel AUROC"))
    assert line.endswith("n/a")


@pytest.mark.parametrize("argv, fragment", [
    (["{missing}", "--detector", "pixel-gaussian"], "not found"),
    (["{root}", "--detector", "no-such"], "unknown detector"),
    (["{root}", "--detector", "pixel-gaussian", "--set", "bogus=1"], "unknown setting"),
    (["{root}", "--detector", "pixel-gaussian", "--set", "image_size=abc"], "image_size"),
    (["{root}", "--detector", "pixel-gaussian", "--set", "noequals"], "KEY=VALUE"),
    (["{root}", "--detector", "pixel-gaussian", "--layout", "mtd"], "MTD"),
    (["{root}", "--detector", "pixel-gaussian", "--category", "nope"], "nope"),
    (["{root}", "--detector", "pixel-gaussian", "--json", "{root}"], "--json"),
    (["{root}", "--detector", "pixel-gaussian", "--scores", "{root}"], "--scores"),
    (["{root}", "--detector", "pixel-gaussian", "--device", "tpu"], "device"),
    (["{root}", "--detector", "pixel-gaussian", "--snapshot-minutes", "10"], "need --save-model"),
    (["{root}", "--detector", "pixel-gaussian", "--batch", "all"], "zero-shot"),
    (["{root}", "--detector", "mutual", "--score-runs", "2"], "time its cache"),
])
def test_bench_usage_errors_exit_2(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                   argv: list[str], fragment: str) -> None:
    args = [a.format(root=root, missing=tmp_path / "missing") for a in argv]
    rc = main(["bench", *args, "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("anomaly-inspector: ") and fragment in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [["--max-train", "0"], ["--max-test", "x"], ["--seed", "-1"], ["--layout", "odd"],
                                   ["--score-runs", "0"],
                                   ["--snapshot-minutes", "10,x"], ["--snapshot-epochs", "0"],
                                   ["--snapshot-minutes", "nan"], ["--snapshot-epochs", ","]])
def test_bench_bad_option_values_exit_2(root: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(root), "--detector", "pixel-gaussian", *extra])
    assert exc.value.code == 2


def test_bench_missing_detector_option_exits_2(root: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(root)])
    assert exc.value.code == 2


def test_bench_help_via_the_installed_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "app", "bench", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0
    for option in ("--detector", "--layout", "--category", "--device", "--set", "--max-train", "--max-test",
                   "--seed", "--json"):
        assert option in proc.stdout


@pytest.mark.skipif(not (DATASETS / "mvtec_ad" / "bottle").is_dir(), reason="MVTec bottle not present")
def test_bench_real_bottle_subset(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    rc = main(["bench", str(DATASETS / "mvtec_ad" / "bottle"), "--detector", "pixel-gaussian", "--max-train", "12",
               "--max-test", "8", "--set", "image_size=64", "--device", "cpu", "--json", str(out), "-q"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["n_train"] == 12 and res["n_test"] == 8
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert math.isfinite(res["metrics"][key])


def test_bench_save_model_then_evaluate_it_with_other_settings(root: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    model, first, second = tmp_path / "model", tmp_path / "a.json", tmp_path / "b.json"
    assert main(["bench", str(root), "--detector", "pixel-gaussian", "--save-model", str(model), "--json",
                 str(first), *FAST]) == 0
    assert "saved the trained model" in capsys.readouterr().err
    assert main(["bench", str(root), "--detector", "pixel-gaussian", "--model", str(model), "--set", "blur_sigma=2",
                 "--device", "cpu", "--json", str(second)]) == 0
    assert "evaluated the saved model" in capsys.readouterr().err
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["config"]["blur_sigma"] == 2.0 and b["config"]["image_size"] == 32
    assert b["timing"]["fit_seconds"] == pytest.approx(a["timing"]["fit_seconds"]) and b["n_train"] == a["n_train"]
    assert b["metrics"]["accuracy"] is not None  # re-calibrated on the model's own held-out images
    # refused: both at once, a setting baked into the weights, a folder that is not a model
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(root), "--detector", "pixel-gaussian", "--model", str(model), "--save-model",
              str(tmp_path / "x")])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["bench", str(root), "--detector", "pixel-gaussian", "--model", str(model), "--set",
                 "image_size=16"]) == 2
    assert "cannot change image_size" in capsys.readouterr().err
    assert main(["bench", str(root), "--detector", "pixel-gaussian", "--model", str(tmp_path)]) == 2
    assert "anomaly-inspector:" in capsys.readouterr().err


def test_bench_scores_csv_has_every_scored_image(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import csv

    out = tmp_path / "deep" / "scores.csv"
    js = tmp_path / "b.json"
    rc = main(["bench", str(root / "part"), "--detector", "pixel-gaussian", "--scores", str(out), "--json", str(js),
               *FAST])
    assert rc == 0 and "wrote the scores of 6 images" in capsys.readouterr().err
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows].count("1") == 3 and len(rows) == 6
    assert all(Path(r["path"]).is_file() and math.isfinite(float(r["score"])) and r["group"] == "" for r in rows)
    # the same scores the metrics were computed from: AUROC from the CSV equals the JSON's
    from core.metrics import image_auroc

    res = json.loads(js.read_text(encoding="utf-8"))
    auc = image_auroc([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
    assert auc == pytest.approx(res["metrics"]["image_auroc"])


def test_bench_table_lists_each_grouping_method() -> None:
    from app.cli.bench import format_table

    res = {"detector": "z", "dataset": "d", "category": None, "device": "cpu", "config": {}, "n_train": 0,
           "n_test": 4, "batch": "train+test",
           "metrics": dict.fromkeys(("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall")),
           "groupings": {"ncut": {"normal": 3, "suspect": 1, "accuracy": 0.75, "recall": 0.5, "error": None},
                         "gmm": {"normal": None, "suspect": None, "accuracy": None, "recall": None,
                                 "error": "all scores are equal"}},
           "timing": {"fit_seconds": None, "score_seconds": 1.0, "score_images_per_second": 4.0,
                      "peak_rss_mb": None, "peak_gpu_mb": None}, "version": "x"}
    lines = [" ".join(line.split()) for line in format_table(res).splitlines()]
    assert "ncut groups 3 normal, 1 suspect; accuracy 0.7500, recall 0.5000" in lines
    assert "gmm groups could not split: all scores are equal" in lines


def test_bench_table_says_how_far_training_got_and_on_what_machine() -> None:
    from app.cli.bench import format_table

    res = {"detector": "vqvae", "dataset": "d", "category": None, "device": "cpu", "config": {}, "n_train": 8,
           "n_test": 4, "batch": "test", "metrics": dict.fromkeys(("image_auroc", "pixel_auroc", "aupro", "f1_max",
                                                                   "accuracy", "recall")),
           "groupings": None,
           "timing": {"fit_seconds": 600.0, "score_seconds": 1.0, "score_images_per_second": 4.0,
                      "peak_rss_mb": None, "peak_gpu_mb": None},
           "training": {"epochs_done": 245, "steps": 3185, "stopped_by": "time"},
           "machine": {"cpu": "AMD EPYC", "logical_cpus": 2, "torch_threads": 2, "cpu_capability": "AVX2",
                       "bf16_instructions": False, "gpu": None, "torch": "2"},
           "version": "x"}
    lines = [" ".join(line.split()) for line in format_table(res).splitlines()]
    assert "trained 245 epochs, 3185 steps, time budget reached" in lines
    assert "machine AMD EPYC, 2 logical CPUs, 2 torch threads, AVX2, no bf16 instructions" in lines
    old = {k: v for k, v in res.items() if k not in ("training", "machine")}  # JSON written before these keys
    assert not any(line.startswith(("trained", "machine")) for line in format_table(old).splitlines())


def test_bench_table_lists_every_scan_when_the_split_was_scanned_more_than_once() -> None:
    from app.cli.bench import _runs_note

    assert _runs_note([38.04, 41.5, 39.46]) == "; the median of 3 scans: 38.0, 41.5, 39.5 images/s"
    assert _runs_note([40.0]) == "" and _runs_note(None) == ""  # one scan, or JSON written before the key


def test_bench_table_names_the_runtime_and_the_bank_search() -> None:
    from app.cli.bench import _runtime_rows

    rt = {"runtime": "openvino", "precision": "bfloat16", "threads": 2, "convert_seconds": None, "search": "bf16"}
    assert _runtime_rows(rt, 2) == [("runtime", "openvino bfloat16, 2 threads, 2 decoding; nearest-neighbour "
                                                "search: bf16 product, float32 decision (exact)")]
    older = {k: v for k, v in rt.items() if k != "search"}  # JSON written before the key
    assert _runtime_rows(older, None) == [("runtime", "openvino bfloat16, 2 threads")]


def test_bench_table_says_when_two_lanes_scored() -> None:
    from app.cli.bench import _runtime_rows

    rt = {"runtime": "torch", "precision": "float32", "threads": 2, "convert_seconds": None, "search": None, "lanes": 2}
    assert _runtime_rows(rt, None) == [("runtime", "torch float32, 2 threads in 2 scoring lanes")]
    assert _runtime_rows({**rt, "lanes": 1}, None) == [("runtime", "torch float32, 2 threads")]


def test_the_report_says_when_the_bank_search_is_approximate():
    from app.cli.bench import search_words

    assert search_words("bf16") == "bf16 product, float32 decision (exact)"
    words = search_words("pca64+bf16")
    assert "64 principal components" in words and "approximate" in words and "(exact)" not in words
