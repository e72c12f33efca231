"""Tests of core.engine.bench on a tiny synthetic MVTec AD tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.layouts import DatasetError, Sample
from core.detectors.config import ConfigError
from core.detectors.registry import UnknownDetectorError
from core.engine.bench import (
    METRIC_KEYS,
    RESULT_KEYS,
    TIMING_KEYS,
    load_bench_dataset,
    package_version,
    run_bench,
    stratified_subset,
)
from core.runtime.cancel import Cancelled, CancelToken

SIZE = 32
FAST = {"image_size": "32", "blur_sigma": "1.0", "batch_size": "4"}


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, img)
    assert ok
    data.tofile(path)


def make_tree(root: Path, category: str = "widget", n_train: int = 12, n_good: int = 4, n_bad: int = 4) -> Path:
    """An MVTec-layout category: grey noise around 128; defects are a bright square with a mask."""
    rng = np.random.default_rng(0)
    cat = root / category

    def good() -> np.ndarray:
        return np.clip(128 + rng.normal(0, 4, (SIZE, SIZE)), 0, 255).astype(np.uint8)

    for i in range(n_train):
        _write(cat / "train" / "good" / f"{i:03d}.png", good())
    for i in range(n_good):
        _write(cat / "test" / "good" / f"{i:03d}.png", good())
    for i in range(n_bad):
        img, mask = good(), np.zeros((SIZE, SIZE), np.uint8)
        y, x = 4 + 5 * (i % 4), 4 + 3 * i % 20
        img[y:y + 6, x:x + 6] = 250
        mask[y:y + 6, x:x + 6] = 255
        _write(cat / "test" / "spot" / f"{i:03d}.png", img)
        _write(cat / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return cat


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="module")
def result(tree: Path) -> dict:
    return run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST)


def test_keys_are_exactly_the_documented_ones(result: dict) -> None:
    assert tuple(result) == RESULT_KEYS
    assert tuple(result["metrics"]) == METRIC_KEYS
    assert tuple(result["timing"]) == TIMING_KEYS
    assert set(result) == {"detector", "dataset", "category", "device", "config", "n_train", "n_test", "batch",
                           "metrics", "groupings", "timing", "training", "self_check", "auto", "runtime", "machine",
                           "version"}
    assert result["runtime"]["runtime"] == "torch" and result["runtime"]["precision"] in ("float32", "bfloat16")
    assert result["training"] is None  # pixel-gaussian has no training loop
    assert set(result["machine"]) == {"cpu", "logical_cpus", "torch_threads", "cpu_capability", "bf16_instructions",
                                      "gpu", "torch"}
    assert result["machine"]["torch_threads"] >= 1 and result["machine"]["gpu"] is None
    assert set(result["metrics"]) == {"image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall"}
    assert set(result["timing"]) == {"fit_seconds", "score_seconds", "score_images_per_second", "score_cpu_seconds",
                                     "decode_workers", "peak_rss_mb", "peak_gpu_mb", "score_runs"}
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN


def test_values(result: dict, tree: Path) -> None:
    assert result["detector"] == "pixel-gaussian"
    assert result["category"] == "widget"
    assert result["device"] == "cpu"
    assert result["config"]["image_size"] == 32 and result["config"]["seed"] == 0
    assert result["n_train"] == 12 and result["n_test"] == 8
    for key in METRIC_KEYS:
        assert result["metrics"][key] is not None and math.isfinite(result["metrics"][key]), key
    # The defects are obvious: everything ranks perfectly.
    assert result["metrics"]["image_auroc"] == pytest.approx(1.0)
    assert result["metrics"]["pixel_auroc"] > 0.95
    assert 0.0 < result["metrics"]["aupro"] <= 1.0
    t = result["timing"]
    assert t["fit_seconds"] > 0 and t["score_seconds"] > 0
    assert t["score_images_per_second"] == pytest.approx(8 / t["score_seconds"])
    assert t["peak_rss_mb"] is None or t["peak_rss_mb"] > 10
    assert t["peak_gpu_mb"] is None
    assert result["version"] == package_version() and result["version"]


def test_detector_without_maps_has_null_pixel_metrics(tree: Path) -> None:
    res = run_bench(tree, "ocsvm", device="cpu", overrides={"image_size": "16"})
    assert res["metrics"]["pixel_auroc"] is None and res["metrics"]["aupro"] is None
    assert math.isfinite(res["metrics"]["image_auroc"])
    assert res["metrics"]["accuracy"] is not None


def test_root_with_a_single_category_needs_no_category(tree: Path) -> None:
    ds = load_bench_dataset(tree.parent)
    assert ds.category == "widget" and len(ds.test) == 8
    ds = load_bench_dataset(tree.parent, layout="mvtec")
    assert ds.category == "widget"


def test_root_with_several_categories_needs_one(tmp_path: Path) -> None:
    make_tree(tmp_path, "a", 3, 1, 1)
    make_tree(tmp_path, "b", 3, 1, 1)
    with pytest.raises(DatasetError, match="needs a category"):
        load_bench_dataset(tmp_path)
    assert load_bench_dataset(tmp_path, category="b").category == "b"


def test_max_train_max_test_and_seed(tree: Path) -> None:
    res = run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, max_train=6, max_test=4, seed=3)
    assert res["n_train"] == 6 and res["n_test"] == 4
    assert res["config"]["seed"] == 3
    assert res["metrics"]["image_auroc"] is not None  # both classes kept
    # An explicit --set seed wins over --seed.
    res = run_bench(tree, "pixel-gaussian", device="cpu", overrides={**FAST, "seed": "7"}, max_test=4, seed=3)
    assert res["config"]["seed"] == 7


def test_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownDetectorError):
        run_bench(tree, "no-such-detector", device="cpu")
    with pytest.raises(ConfigError):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides={"nonsense": "1"})
    with pytest.raises(DatasetError):
        run_bench(tmp_path / "missing", "pixel-gaussian", device="cpu", overrides=FAST)
    with pytest.raises(ValueError):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, max_test=0)


def test_cancel(tree: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, cancel=token)


def test_progress_is_monotonic_and_ends_at_one(tree: Path) -> None:
    seen: list[float] = []
    run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, progress=lambda d, t, m="": seen.append(d / t))
    assert seen and seen[-1] == 1.0
    assert all(b >= a for a, b in zip(seen, seen[1:]))


# --------------------------------------------------------------------------- stratified subset
def _samples(n_good: int, bad: dict[str, int]) -> list[Sample]:
    out = [Sample(Path(f"g{i}"), 0) for i in range(n_good)]
    for kind, n in bad.items():
        out += [Sample(Path(f"{kind}{i}"), 1, None, kind) for i in range(n)]
    return out


def test_stratified_subset_keeps_proportions() -> None:
    samples = _samples(20, {"crack": 40, "hole": 20})
    idx = stratified_subset(samples, 40, seed=0)
    assert idx == sorted(idx) and len(set(idx)) == 40
    kinds = [samples[i].defect_type for i in idx]
    assert kinds.count("good") == 10 and kinds.count("crack") == 20 and kinds.count("hole") == 10
    assert stratified_subset(samples, 40, seed=0) == idx  # seeded
    assert stratified_subset(samples, 40, seed=1) != idx
    assert stratified_subset(samples, 500, seed=0) == list(range(80))
    assert stratified_subset(samples, None, seed=0) == list(range(80))


def test_stratified_subset_keeps_both_labels() -> None:
    samples = _samples(98, {"crack": 2})
    for n in (2, 3, 5):
        idx = stratified_subset(samples, n, seed=0)
        assert len(idx) == n
        assert {samples[i].label for i in idx} == {0, 1}
    assert len(stratified_subset(samples, 1, seed=0)) == 1
    with pytest.raises(ValueError):
        stratified_subset(samples, 0, seed=0)


# --------------------------------------------------------------------------- zero-shot detectors
def _zero_shot_class(with_group: bool):
    from core.detectors.base import Detector
    from core.results import ScoreResult

    class Brightest(Detector):
        name = "test-brightest"
        title = summary = "test"
        zero_shot = True

        def _fit(self, images, progress, cancel, skipped) -> None:  # pragma: no cover - never called
            raise AssertionError("zero-shot detectors are not trained")

        def _score_batch(self, images):
            out = []
            for img in images:
                s = float(img.max())
                out.append(ScoreResult(score=s, columns={"group": "suspect" if s > 0.9 else "normal"} if with_group else {}))
            return out

        def _state(self):
            return {}

        def _restore(self, tensors, meta) -> None:
            pass

    return Brightest


@pytest.mark.parametrize("with_group", [True, False])
def test_zero_shot_detector(tree: Path, monkeypatch: pytest.MonkeyPatch, with_group: bool) -> None:
    from core.detectors import registry

    cls = _zero_shot_class(with_group)
    monkeypatch.setitem(registry.REGISTRY, cls.name, cls)
    res = run_bench(tree, cls.name, device="cpu")
    assert res["n_train"] == 0 and res["timing"]["fit_seconds"] is None
    assert res["metrics"]["image_auroc"] == pytest.approx(1.0)
    assert res["metrics"]["pixel_auroc"] is None
    # A zero-shot scan is always split into groups (core.grouping, normalized cut by default), so
    # accuracy and recall are measured with or without a detector-made group column.
    assert res["metrics"]["accuracy"] == pytest.approx(1.0) and res["metrics"]["recall"] == pytest.approx(1.0)
    assert res["batch"] == "test" and res["n_test"] == 8


def test_zero_shot_batch_of_the_whole_dataset(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zero-shot paper's protocol: training and test images scored as one batch, the training
    images counting as good (12 train + 8 test here, 4 defective: a defective minority)."""
    from core.detectors import registry

    cls = _zero_shot_class(True)
    monkeypatch.setitem(registry.REGISTRY, cls.name, cls)
    res = run_bench(tree, cls.name, device="cpu", zero_shot_batch="all")
    assert res["batch"] == "train+test" and res["n_test"] == 20 and res["n_train"] == 0
    assert res["metrics"]["image_auroc"] == pytest.approx(1.0) and res["metrics"]["recall"] == pytest.approx(1.0)
    few = run_bench(tree, cls.name, device="cpu", zero_shot_batch="all", max_train=5)
    assert few["n_test"] == 13
    with pytest.raises(ConfigError, match="cannot also be in the batch"):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, zero_shot_batch="all")
    with pytest.raises(ValueError, match="zero_shot_batch"):
        run_bench(tree, cls.name, device="cpu", zero_shot_batch="train")


# ------------------------------------------------------------------ saved models
def test_save_model_then_evaluate_it_gives_the_same_result(tree: Path, result: dict, tmp_path: Path) -> None:
    model = tmp_path / "model"
    saved = run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=model)
    assert (model / "config.json").exists()
    again = run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model)
    assert again["metrics"] == saved["metrics"] == result["metrics"]
    assert again["n_train"] == saved["n_train"]
    assert again["timing"]["fit_seconds"] == pytest.approx(saved["timing"]["fit_seconds"])


def test_saved_model_with_changed_scores_is_recalibrated_on_its_own_held_out_images(tree: Path,
                                                                                  tmp_path: Path) -> None:
    model = tmp_path / "model"
    run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=model)
    changed = run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, overrides={"blur_sigma": "3.0"})
    fresh = run_bench(tree, "pixel-gaussian", device="cpu", overrides={**FAST, "blur_sigma": "3.0"})
    # Same weights (pixel statistics do not depend on the blur), same held-out images: same decisions.
    assert changed["config"]["blur_sigma"] == 3.0
    assert changed["metrics"] == fresh["metrics"]
    assert changed["metrics"]["accuracy"] is not None


def test_saved_model_on_another_dataset_has_no_decisions_after_a_score_change(tree: Path, tmp_path: Path) -> None:
    other = make_tree(tmp_path / "other", n_train=10)
    model = tmp_path / "model"
    run_bench(other, "pixel-gaussian", device="cpu", overrides=FAST, save_model=model)
    same = run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model)
    assert same["metrics"]["accuracy"] is not None  # unchanged settings: its threshold still applies
    changed = run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, overrides={"blur_sigma": "3.0"})
    assert changed["metrics"]["accuracy"] is None and changed["metrics"]["recall"] is None
    assert changed["metrics"]["image_auroc"] is not None


def test_saved_model_errors(tree: Path, tmp_path: Path) -> None:
    from core.io.checkpoint import CheckpointError

    model = tmp_path / "model"
    run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=model)
    with pytest.raises(CheckpointError, match="holds a 'pixel-gaussian' model"):
        run_bench(tree, "ocsvm", device="cpu", model_dir=model)
    with pytest.raises(ConfigError, match="image_size"):
        run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, overrides={"image_size": "16"})
    with pytest.raises(CheckpointError, match="not found"):
        run_bench(tree, "pixel-gaussian", device="cpu", model_dir=tmp_path / "none")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):  # refused before training, not after
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=full)
    with pytest.raises(ValueError):
        run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, save_model=tmp_path / "x")


def test_snapshots_are_saved_beside_the_model_and_evaluate_with_decisions(tree: Path, tmp_path: Path) -> None:
    """One training, a learning curve: the snapshot after epoch 1 is saved as MODEL-1ep; evaluated
    with model_dir it is calibrated on the model's own held-out images (it was saved before any
    calibration) and reports its own training time."""
    from core.engine.bench import snapshot_folder, snapshot_labels
    from tests.core.test_detectors import TINY

    sets = {**{k: str(v) if not isinstance(v, tuple) else ",".join(map(str, v)) for k, v in TINY["vqvae"].items()},
            "epochs": "3", "image_size": "32"}
    model = tmp_path / "m"
    final = run_bench(tree, "vqvae", device="cpu", overrides=sets, save_model=model, snapshot_epochs=(1, 2, 7))
    assert snapshot_labels((10, 2.5), (1,)) == ["10min", "2.5min", "1ep"]
    assert snapshot_folder(model, "1ep") == tmp_path / "m-1ep"
    assert (tmp_path / "m-1ep").is_dir() and (tmp_path / "m-2ep").is_dir()
    assert not (tmp_path / "m-7ep").exists()  # training ended first
    snap = run_bench(tree, "vqvae", device="cpu", model_dir=tmp_path / "m-1ep")
    assert snap["metrics"]["accuracy"] is not None and snap["metrics"]["image_auroc"] is not None
    assert 0 < snap["timing"]["fit_seconds"] < final["timing"]["fit_seconds"]
    # How far each model got: the final one ran its 3 epochs, the snapshot a third of the steps.
    assert final["training"]["epochs_done"] == 3 and final["training"]["stopped_by"] == "epochs"
    assert 0 < snap["training"]["steps"] * 3 == final["training"]["steps"]
    with pytest.raises(ValueError, match="snapshots need"):
        run_bench(tree, "vqvae", device="cpu", overrides=sets, snapshot_epochs=(1,))
    with pytest.raises(ConfigError, match="pixel-gaussian has no training loop.*differnet.*sanf"):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=tmp_path / "pg", snapshot_epochs=(1,))
    (tmp_path / "busy-1ep").mkdir()
    (tmp_path / "busy-1ep" / "notes.txt").write_text("mine")
    from core.io.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not empty"):  # checked before training
        run_bench(tree, "vqvae", device="cpu", overrides=sets, save_model=tmp_path / "busy", snapshot_epochs=(1,))


def test_a_saved_model_accepts_its_own_baked_in_settings_again(tree: Path, tmp_path: Path) -> None:
    """A script that repeats the settings it trained with (a fixed field at its saved value) is
    not changing the model; another value is still refused."""
    model = tmp_path / "model"
    saved = run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, save_model=model)
    again = run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, overrides={"image_size": "32"})
    assert again["metrics"] == saved["metrics"]
    with pytest.raises(ConfigError, match="cannot change image_size"):
        run_bench(tree, "pixel-gaussian", device="cpu", model_dir=model, overrides={"image_size": "24"})


def test_zero_shot_bench_compares_every_grouping_method_on_one_set_of_scores(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's Table 2 on one scoring: each method's sizes, accuracy and recall, the
    detector's own method matching ``metrics``; per-image rows for ``bench --scores``."""
    from core.detectors import registry
    from core.grouping import DEFAULT_METHOD, METHODS, group_scores

    cls = _zero_shot_class(False)
    monkeypatch.setitem(registry.REGISTRY, cls.name, cls)
    rows: list = []
    res = run_bench(tree, cls.name, device="cpu", zero_shot_batch="all", per_image=rows)
    g = res["groupings"]
    assert tuple(g) == METHODS
    for method, entry in g.items():
        assert entry["error"] is None and entry["normal"] + entry["suspect"] == res["n_test"]
        labels = np.array([r["label"] for r in rows])
        suspect = group_scores([r["score"] for r in rows], method, seed=0).labels == 1
        assert entry["suspect"] == int(suspect.sum())
        assert entry["recall"] == pytest.approx(suspect[labels == 1].mean())
        assert entry["accuracy"] == pytest.approx((suspect == (labels == 1)).mean())
    own = g[DEFAULT_METHOD]  # the detector has no group setting: the scan's default method
    assert own["accuracy"] == res["metrics"]["accuracy"] and own["recall"] == res["metrics"]["recall"]
    assert len(rows) == res["n_test"] and [r["group"] for r in rows].count("suspect") == own["suspect"]
    assert sum(r["label"] for r in rows) == 4 and all(Path(r["path"]).is_file() for r in rows)


def test_groupings_are_null_for_a_trained_detector_and_name_a_batch_that_cannot_split(result: dict) -> None:
    from core.engine.bench import compare_groupings

    assert result["groupings"] is None
    same = compare_groupings(np.array([0, 1, 0]), np.array([1.0, 1.0, 1.0]), seed=0)
    one = compare_groupings(np.array([1]), np.array([0.5]), seed=0)
    assert all(e["error"] and e["accuracy"] is None for e in one.values())
    assert set(same) == {"ncut", "kmeans", "gmm"}
    for e in same.values():  # nothing to split: everything normal, the defect missed
        assert (e["normal"], e["suspect"], e["recall"], e["error"]) == (3, 0, 0.0, None)
        assert e["accuracy"] == pytest.approx(2 / 3)


def test_score_runs_scan_the_split_again_and_report_the_median_scan(tree: Path) -> None:
    res = run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, score_runs=3, self_check=False)
    t = res["timing"]
    runs = t["score_runs"]
    assert len(runs) == 3 and all(r is not None and r > 0 for r in runs)
    assert t["score_images_per_second"] == sorted(runs)[1]  # the median scan's figures
    assert t["score_seconds"] == pytest.approx(res["n_test"] / t["score_images_per_second"])
    one = run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, self_check=False)
    assert len(one["timing"]["score_runs"]) == 1 and one["metrics"] == res["metrics"]  # metrics: the first scan
    with pytest.raises(ValueError, match="at least 1"):
        run_bench(tree, "pixel-gaussian", device="cpu", overrides=FAST, score_runs=0)
    with pytest.raises(ConfigError, match="zero-shot"):
        run_bench(tree, "mutual", device="cpu", score_runs=2)
