"""The scripts of benchmarks/ that prepare and run the full-length GPU benchmarks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from benchmarks.pack_datasets import pack_mtd, pack_mvtec_category
from core.data.layouts import load_dataset


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imencode(path.suffix, img)[1].tofile(path)


def test_mvtec_category_is_shrunk_to_jpeg_with_masks(tmp_path: Path) -> None:
    src = tmp_path / "src" / "part"
    rng = np.random.default_rng(0)
    for i in range(4):
        _png(src / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (90, 60, 3), dtype=np.uint8))
    _png(src / "test" / "good" / "000.png", rng.integers(0, 255, (90, 60, 3), dtype=np.uint8))
    _png(src / "test" / "crack" / "000.png", rng.integers(0, 255, (90, 60, 3), dtype=np.uint8))
    mask = np.zeros((90, 60), np.uint8)
    mask[10:30, 20:40] = 255
    _png(src / "ground_truth" / "crack" / "000_mask.png", mask)

    dst = tmp_path / "out" / "part"
    assert pack_mvtec_category(src, dst, side=45, quality=90) == 6
    before, after = load_dataset(src, "mvtec"), load_dataset(dst, "mvtec")
    assert len(after.train) == len(before.train) == 4
    assert [(s.label, s.defect_type) for s in after.test] == [(s.label, s.defect_type) for s in before.test]
    assert all(p.suffix == ".jpg" for p in after.train)
    img = cv2.imread(str(after.train[0]))
    assert img.shape == (45, 30, 3)
    packed_mask = cv2.imread(str(next(s.mask for s in after.test if s.mask is not None)), cv2.IMREAD_GRAYSCALE)
    assert packed_mask.shape == (45, 30) and set(np.unique(packed_mask)) == {0, 255}


def test_mtd_keeps_the_split_and_only_defective_masks(tmp_path: Path) -> None:
    src = tmp_path / "mtd"
    rng = np.random.default_rng(1)
    rows = []
    for i, (cat, split, label) in enumerate([("MT_Free", "train", 0), ("MT_Free", "train", 0), ("MT_Free", "test", 0),
                                             ("MT_Crack", "test", 1)]):
        img = f"{cat}/Imgs/t{i}.jpg"
        size = (50, 40) if i else (120, 80)  # the first is shrunk, the others copied byte for byte
        _png(src / img, rng.integers(0, 255, size, dtype=np.uint8))
        m = np.zeros(size, np.uint8)
        if label:
            m[5:15, 5:15] = 255
        _png(src / img.replace(".jpg", ".png"), m)
        rows.append({"image": img, "split": split, "label": label, "category": cat, "mask": img.replace(".jpg", ".png")})
    with (src / "split.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    dst = tmp_path / "out"
    assert pack_mtd(src, dst, side=100, quality=90) == 4
    before, after = load_dataset(src, "mtd"), load_dataset(dst, "mtd")
    assert [p.name for p in after.train] == [p.name for p in before.train]
    assert sorted((s.label, s.defect_type, s.mask is not None) for s in after.test) == [(0, "good", False),
                                                                                 (1, "crack", True)]
    assert cv2.imread(str(dst / rows[0]["image"]), cv2.IMREAD_GRAYSCALE).shape == (100, 67)
    assert (dst / rows[1]["image"]).read_bytes() == (src / rows[1]["image"]).read_bytes()
    assert sorted(p.name for p in dst.rglob("*.png")) == ["t3.png"]


def test_full_length_script_parses_and_refuses_an_unknown_group(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "full_length.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(script), "no-such-group", str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": "true"})
    assert proc.returncode == 2 and "unknown group: no-such-group" in proc.stderr


def test_curves_script_runs_a_curve_from_one_training(tmp_path: Path) -> None:
    """benchmarks/curves.sh on a tiny MVTec tree: one training saves the snapshots, each snapshot
    and the final model is evaluated into its own JSON; an unknown group exits 2."""
    import json
    import os
    import subprocess
    import sys

    from tests.core.test_bench import make_tree

    make_tree(tmp_path / "data" / "mvtec_ad", category="bottle")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "curves.sh"
    env = {**os.environ, "DATA": str(tmp_path / "data"), "MODELS": str(tmp_path / "models"),
           "RESULTS": str(tmp_path / "out"), "MINUTES": "0.02", "SNAPS": "0.001", "THREADS": "1",
           "PY": sys.executable,
           "EXTRA": "--set image_size=32 --set train_crop=16 --set hidden=8 --set n_embeddings=16 --set embedding_dim=8"}
    proc = subprocess.run(["bash", str(script), "vqvae-bottle", "--device", "cpu"], cwd=script.parents[1],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert out == ["bottle-vqvae-256px-crop96-0.02min-0.001min-cpu.json", "bottle-vqvae-256px-crop96-0.02min-final-cpu.json"]
    snap = json.loads((tmp_path / "out" / out[0]).read_text())
    final = json.loads((tmp_path / "out" / out[1]).read_text())
    assert snap["config"]["train_crop"] == 16 and snap["timing"]["fit_seconds"] < final["timing"]["fit_seconds"]
    assert final["training"]["stopped_by"] == "time" and final["machine"]["torch_threads"] == 1
    # The models are kept per TAG: a bf16 curve does not delete the float32 one's models.
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["bottle-vqvae-256px-crop96-0.02min-cpu",
                                                       "bottle-vqvae-256px-crop96-0.02min-cpu-0.001min"]
    proc = subprocess.run(["bash", str(script), "vqvae-bottle", "--device", "cpu"], cwd=script.parents[1],
                          capture_output=True, text=True, env={**env, "TAG": "bf16-cpu", "SNAPS": "5"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no snapshot 5min" in proc.stdout
    assert (models / "bottle-vqvae-256px-crop96-0.02min-cpu-0.001min").is_dir()
    assert (models / "bottle-vqvae-256px-crop96-0.02min-bf16-cpu").is_dir()
    bad = subprocess.run(["bash", str(script), "no-such-group"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown group: no-such-group" in bad.stderr


def test_feature_ceilings_nearest_neighbour_and_gaussian() -> None:
    """The nearest-image distance from the matrix expansion equals the brute-force one, and both
    training-free estimates rank an off-distribution feature vector above in-distribution ones."""
    from benchmarks.feature_ceiling import ceilings

    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (60, 8))
    test = np.concatenate([rng.normal(0, 1, (5, 8)), rng.normal(6, 1, (1, 8))])
    out = ceilings(train, test)
    sd = train.std(0) + 1e-6
    brute = np.sqrt((((test / sd)[:, None, :] - (train / sd)[None]) ** 2).sum(-1).min(1))
    np.testing.assert_allclose(out["nearest_neighbour"], brute, rtol=1e-9, atol=1e-9)
    for v in out.values():
        assert v.shape == (6,) and np.argmax(v) == 5


def test_grouping_widths_reads_bench_scores_and_checks_splits_on_synthetic_batches(tmp_path: Path) -> None:
    """The measured finding behind the ldm grouping default: on a bulk + tail + one extreme
    score, the product's normalized cut cuts off the extreme image alone; k-means keeps the tail."""
    from benchmarks.grouping_widths import main

    rng = np.random.default_rng(3)
    scores = np.r_[rng.normal(0, 1, 40), 4 + rng.exponential(1.0, 8)]
    path = tmp_path / "s.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "score", "group"])
        for i, s in enumerate(scores):
            w.writerow([f"x{i}.png", int(i >= 40), repr(float(s)), ""])
    res = main([f"toy={path}", "--seeds", "2", "--json", str(tmp_path / "w.json")])
    toy = res["batches"]["toy"]
    assert toy["n"] == 48 and toy["defective"] == 8
    assert toy["splits"]["kmeans"]["recall"] == 1.0 and toy["splits"]["kmeans"]["suspect"] <= 10
    syn = res["synthetic_good_splits"]
    assert syn["kmeans"] == 2 and syn["ncut (product: one width, neighbour median)"] == 0
    assert (tmp_path / "w.json").is_file()


def test_stream_scan_benchmark_runs_as_a_script_and_writes_its_json(tmp_path: Path) -> None:
    """Run as ``python benchmarks/bench_stream_scan.py`` (not as a module): the --json write at
    the end imports benchmarks._common, which failed before the script put the repo on sys.path."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_stream_scan.py"), "--counts", "6",
                           "--size", "32", "--image-size", "32", "--data", str(tmp_path / "data"), "--json", str(out)],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["runs"][0]["rows"]
    assert rows[0]["scored"] == 6 and rows[0]["model_image_size"] == 32 and rows[0]["peak_rss_mib"] > 0


def test_differnet_curve_scores_cached_test_features_as_the_product_does(tmp_path: Path) -> None:
    """benchmarks/differnet_curve.py evaluates the flow on test features computed once; every
    test image's score from that path must equal Detector.score's (``--check`` all of them), and
    the curve has a row per evaluated epoch plus the last, with training time growing."""
    import json

    from benchmarks.differnet_curve import main
    from tests.core.test_bench import make_tree

    cat = make_tree(tmp_path / "mvtec", n_train=6, n_good=3, n_bad=3)
    out = tmp_path / "c.json"
    res = main([str(cat.parent), "--epochs", "3", "--copies", "2", "--t", "3", "--eval-epochs", "1,2,7",
                "--check", "6", "--json", str(out),
                "--set", "backbone=tiny-random", "--set", "image_size=32", "--set", "subnet_width=16",
                "--set", "n_coupling_blocks=2", "--set", "train_batch_size=4"])
    assert [r["epoch"] for r in res["curve"]] == [1, 2, 3]
    assert res["check_images"] == 6 and res["check_max_abs_diff"] < 1e-5
    secs = [r["train_seconds"] for r in res["curve"]]
    assert secs == sorted(secs) and secs[0] > 0
    # the last row is on the training clock too: the evaluations inside the fit are not counted
    assert secs[-1] <= res["fit_wall_seconds"] - res["test_feature_seconds"] + 0.2
    for r in res["curve"]:
        assert all(0.0 <= r[k] <= 1.0 for k in ("image_auroc", "image_auroc_t1", "image_auroc_nll"))
    assert len(res["loss_history"]) == 3 and res["settings"]["train_copies"] == 2
    assert json.loads(out.read_text())["curve"] == res["curve"]


def test_unaligned_variant_moves_each_mask_with_its_image_and_is_seeded(tmp_path: Path) -> None:
    from benchmarks.unaligned import draw, make_variant

    src = tmp_path / "src" / "part"
    rng = np.random.default_rng(2)
    for i in range(3):
        _png(src / "train" / "good" / f"{i:03d}.png", rng.integers(0, 60, (64, 80, 3), dtype=np.uint8))
    _png(src / "test" / "good" / "000.png", rng.integers(0, 60, (64, 80, 3), dtype=np.uint8))
    img = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
    img[20:34, 30:44] = 255  # the "defect": a bright square, exactly where the mask is
    mask = np.zeros((64, 80), np.uint8)
    mask[20:34, 30:44] = 255
    _png(src / "test" / "crack" / "000.png", img)
    _png(src / "ground_truth" / "crack" / "000_mask.png", mask)

    out = tmp_path / "variant"
    manifest = make_variant(src, out, seed=3, max_shift=0.1, canvas="same")  # the first variant: same size
    data = load_dataset(out, "mvtec")
    assert len(data.train) == 3 and [(s.label, s.defect_type) for s in data.test] == [(1, "crack"), (0, "good")]
    moved = cv2.imread(str(out / "test" / "crack" / "000.png"))
    moved_mask = cv2.imread(str(out / "ground_truth" / "crack" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert moved.shape == img.shape and moved_mask.shape == mask.shape
    rec = next(r for r in manifest["images"] if r["source"] == "test/crack/000.png")
    assert 0 <= rec["angle"] < 360 and max(abs(v) for v in rec["shift"]) <= 0.1
    assert not np.array_equal(moved_mask, mask)  # it moved
    inside = moved_mask > 0
    assert inside.sum() > 0.8 * (mask > 0).sum()  # the square is not lost to the border here
    # the bright square went where the mask went
    assert moved[inside].mean() > 200 and moved[~inside].mean() < 80
    # the draw depends on the seed and the image's path only
    assert draw(3, "test/crack/000.png", 0.1) == draw(3, "test/crack/000.png", 0.1)
    assert draw(3, "test/crack/000.png", 0.1) != draw(4, "test/crack/000.png", 0.1)


def test_unaligned_whole_canvas_keeps_a_long_tiles_defect_in_view(tmp_path: Path) -> None:
    """A 1 : 2.5 tile with its defect near one end: turned by ~90 degrees in its own canvas
    (the first variant) the defect leaves the view while the label still says defective; the
    default canvas holds the whole tile, the defect and its mask."""
    from benchmarks.unaligned import canvas_size, draw, kept_in_view, make_variant, motion

    src = tmp_path / "src" / "tile"
    rng = np.random.default_rng(5)
    for i in range(2):
        _png(src / "train" / "good" / f"{i:03d}.png", rng.integers(0, 60, (40, 100, 3), dtype=np.uint8))
    img = rng.integers(0, 60, (40, 100, 3), dtype=np.uint8)
    img[14:26, 84:96] = 255  # the defect, 34+ px right of the centre: out of a 40 px tall view when turned upright
    mask = np.zeros((40, 100), np.uint8)
    mask[14:26, 84:96] = 255
    _png(src / "test" / "crack" / "000.png", img)
    _png(src / "ground_truth" / "crack" / "000_mask.png", mask)

    # a seed whose draw turns this tile nearly upright
    seed = next(s for s in range(500) if abs(((draw(s, "test/crack/000.png", 0.1)[0] + 90) % 180) - 90) > 75)
    angle, sx, sy = draw(seed, "test/crack/000.png", 0.1)
    assert kept_in_view(mask, motion((40, 100), angle, sx, sy)) == 0.0  # the first variant loses it
    size = canvas_size((40, 100), angle, 0.1)
    assert kept_in_view(mask, motion((40, 100), angle, sx, sy, size), size) == 1.0

    same = make_variant(src, tmp_path / "same", seed=seed, canvas="same")
    assert same["defects_out_of_view"] == {"none_kept": 1, "under_half_kept": 1}
    whole = make_variant(src, tmp_path / "whole", seed=seed)
    assert whole["canvas"] == "whole" and whole["defects_out_of_view"] == {"none_kept": 0, "under_half_kept": 0}
    moved = cv2.imread(str(tmp_path / "whole" / "test" / "crack" / "000.png"))
    moved_mask = cv2.imread(str(tmp_path / "whole" / "ground_truth" / "crack" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert moved.shape[:2] == moved_mask.shape == (size[1], size[0]) and size[1] > size[0]  # upright now
    inside = moved_mask > 0
    # every defect pixel is in view (reflected copies may add more), marked where it shows
    assert inside.sum() >= (mask > 0).sum() and moved[inside].mean() > 200 and moved[~inside].mean() < 80
    black = make_variant(src, tmp_path / "black", seed=seed, fill="black")  # a dark ground, no reflected copies
    dark = cv2.imread(str(tmp_path / "black" / "test" / "crack" / "000.png"))
    dark_mask = cv2.imread(str(tmp_path / "black" / "ground_truth" / "crack" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert black["fill"] == "black" and dark.shape == moved.shape
    assert (dark[:2, :2] == 0).all() and (dark_mask > 0).sum() <= (moved_mask > 0).sum()
    assert dark[dark_mask > 0].mean() > 200


def test_calibration_fpr_runs_any_detector_on_an_mvtec_folder(tmp_path: Path) -> None:
    from benchmarks.calibration_fpr import run, table

    rng = np.random.default_rng(4)
    for i in range(14):
        _png(tmp_path / "part" / "train" / "good" / f"{i:03d}.png", rng.integers(90, 110, (40, 56, 3), dtype=np.uint8))
    for i in range(4):
        _png(tmp_path / "part" / "test" / "good" / f"{i:03d}.png", rng.integers(90, 110, (40, 56, 3), dtype=np.uint8))
    rows = run(str(tmp_path / "part"), [10], 1, "cpu", "patchcore",
               {"backbone": "tiny-random", "image_size": "32", "resize": "keep"})
    assert {(r["scheme"], r["estimator"]) for r in rows} == {(s, e) for s in ("holdout", "kfold")
                                                              for e in ("empirical", "tail")}
    assert all(r["detector"] == "patchcore" and r["n_unseen_good"] == 4 + 4 and 0 <= r["observed_fpr"] <= 1
               for r in rows)
    assert "| part | 10 | kfold | tail |" in table(rows)
    # the auto row reads the figure of the method auto_calibration picks: 10 goods hold 1 out
    # (< 1/FPR) -> kfold, and 10 out-of-fold scores < 1/0.01 -> the fitted tail
    picked = [r["observed_fpr"] for r in rows if (r["scheme"], r["estimator"], r["target_fpr"]) == ("kfold", "tail", 0.01)]
    auto_line = next(line for line in table(rows).splitlines() if "**auto**" in line)
    assert f"{picked[0]:.3f} (kfold, tail)" in auto_line.split("|")[7]


def test_ablation_table_names_what_each_row_changed(tmp_path: Path) -> None:
    import json

    from benchmarks.ablation_table import rows

    def doc(**cfg):
        return {"config": {"seed": 0, "resize": "square", "top": 0.01, **cfg},
                "metrics": {"image_auroc": 0.9, "pixel_auroc": None, "aupro": 0.5},
                "timing": {"fit_seconds": 10.0, "score_images_per_second": 20.0}, "self_check": {"auroc": 0.8}}

    (tmp_path / "d-default.json").write_text(json.dumps(doc()))
    (tmp_path / "d-resize-keep.json").write_text(json.dumps(doc(resize="keep")))
    (tmp_path / "d-x.part.json").write_text("{")  # a run in progress is skipped
    table = rows(sorted(tmp_path.glob("*.json")))
    assert table[2].startswith("| d-default | — | 0.900 | n/a | 0.500 | 0.800 | 10 | 20.0 |")
    assert table[3].startswith("| d-resize-keep | resize=keep |") and len(table) == 4


def test_omp_wait_benchmark_measures_each_policy_in_its_own_process(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "omp.json"
    subprocess.run([sys.executable, "benchmarks/bench_omp_wait.py", "--repeat", "1", "--cases", "faiss",
                    "--policies", "2", "--json", str(out)], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"default (spin)", "OMP_WAIT_POLICY=PASSIVE"}
    assert all(set(r) == {"faiss"} and r["faiss"]["median_s"] > 0 for r in doc["results"].values())
    assert doc["extra_load_processes"] == 0


def test_bench_runtimes_one_lever_writes_the_bench_json_with_lever_and_load(tmp_path: Path) -> None:
    """benchmarks/bench_runtimes.py's child: one lever of one saved model, the bench JSON plus the
    lever and the load average, and the summary row it makes of it."""
    from benchmarks.bench_runtimes import one, row
    from core.engine.bench import run_bench
    from tests.core.test_bench import make_tree

    tree = make_tree(tmp_path / "mvtec")
    model = tmp_path / "model"
    sets = {"backbone": "tiny-random", "image_size": "32", "batch_size": "4", "coreset_ratio": "0.5"}
    run_bench(tree, "patchcore", device="cpu", overrides=sets, save_model=model, self_check=False)
    out = tmp_path / "lever.json"
    one(str(tree), model, "torch-fp32", out, [], None)
    import json

    res = json.loads(out.read_text())
    assert res["lever"] == "torch-fp32" and res["runtime"] == {**res["runtime"], "runtime": "torch", "precision": "float32"}
    assert len(res["load_average"]["before"]) == 3
    r = row(res, res)
    assert r["delta_image_auroc"] == 0.0 and r["cpu_ms_per_image"] > 0


def test_plain_knn_scores_a_pasted_defect_above_the_good_parts(tmp_path: Path) -> None:
    from benchmarks.plain_knn import run

    rng = np.random.default_rng(5)
    root = tmp_path / "part"
    for i in range(6):
        _png(root / "train" / "good" / f"{i:03d}.png", rng.integers(100, 110, (48, 48, 3), dtype=np.uint8))
    for i in range(3):
        _png(root / "test" / "good" / f"{i:03d}.png", rng.integers(100, 110, (48, 48, 3), dtype=np.uint8))
        bad = rng.integers(100, 110, (48, 48, 3), dtype=np.uint8)
        bad[16:28, 16:28] = 255
        _png(root / "test" / "spot" / f"{i:03d}.png", bad)
        mask = np.zeros((48, 48), np.uint8)
        mask[16:28, 16:28] = 255
        _png(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    out = run(str(root), size=32, bank_ratio=0.5, kind="tiny-random", sigma=1.0)
    assert out["n_train"] == 6 and out["n_test"] == 6
    assert out["bank"] == round(0.5 * out["n_train_patches"]) and out["n_train_patches"] == 6 * 16 * 16
    assert out["metrics"]["image_auroc"] == 1.0 and out["metrics"]["pixel_auroc"] > 0.9


def test_approximate_search_script_matches_the_exact_search_when_it_searches_everything() -> None:
    import pytest
    import torch

    pytest.importorskip("faiss")
    from benchmarks.bench_approx_search import ApproxIndex
    from core.detectors.patchcore.anomaly_map import nearest

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    exact_d, exact_i = nearest(queries, bank, 1)
    for spec in ("ivf:1:1", "ivf:8:8", "hnsw:16:400"):  # one cell, every cell, a search wider than the bank
        d, i = ApproxIndex(bank, spec).search(queries, 1)
        assert torch.equal(i, exact_i), spec
        torch.testing.assert_close(d, exact_d)
    d, i = ApproxIndex(bank, "ivf:32:1").search(queries, 1)  # one cell of 32: not every query finds its nearest
    assert (d >= exact_d - 1e-5).all() and not torch.equal(i, exact_i)
    with pytest.raises(ValueError, match="unknown approximate index"):
        ApproxIndex(bank, "lsh:1:1")


def test_unaligned_right_angles_move_pixels_without_resampling(tmp_path: Path) -> None:
    from benchmarks.unaligned import make_variant

    src = tmp_path / "src" / "tile"
    rng = np.random.default_rng(8)
    for i in range(4):
        _png(src / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    img = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    _png(src / "test" / "good" / "000.png", img)
    out = make_variant(src, tmp_path / "right", seed=1, angles="right")
    assert out["angles"] == "right" and all(r["angle"] % 90 == 0 for r in out["images"])
    moved = cv2.imread(str(tmp_path / "right" / "test" / "good" / "000.png"))
    # every pixel of the image is in the moved one, turned by a right angle (some turn of it matches exactly)
    rec = next(r for r in out["images"] if r["source"] == "test/good/000.png")
    turned = np.rot90(img, k=int(rec["angle"]) // 90)  # cv2's positive angle turns counter-clockwise, as rot90
    th, tw = turned.shape[:2]
    hits = [(y, x) for y in range(moved.shape[0] - th + 1) for x in range(moved.shape[1] - tw + 1)
            if np.array_equal(moved[y:y + th, x:x + tw], turned)]
    assert len(hits) == 1
    none = make_variant(src, tmp_path / "none", seed=1, angles="none")
    assert all(r["angle"] == 0 for r in none["images"])


def test_orient_variant_turns_every_texture_one_way_and_its_mask_with_it(tmp_path: Path) -> None:
    from benchmarks.orient_variant import make, orientation
    from benchmarks.unaligned import canvas_size, motion

    stripes = np.zeros((80, 120, 3), np.uint8)
    stripes[::6] = 200
    stripes = cv2.GaussianBlur(stripes, (0, 0), 1.2)
    assert abs(abs(orientation(stripes)) - 90.0) < 1.0  # horizontal lines: vertical gradients
    src = tmp_path / "src"
    for i, angle in enumerate((0.0, 25.0, 70.0, 130.0)):
        size = canvas_size((80, 120), angle, 0.0, "whole")
        m = motion((80, 120), angle, 0.0, 0.0, size)
        img = cv2.warpAffine(stripes, m, size, borderMode=cv2.BORDER_REFLECT_101)
        _png(src / "train" / "good" / f"{i:03d}.png", img)
    img = stripes.copy()
    img[30:42, 50:62] = 255
    mask = np.zeros((80, 120), np.uint8)
    mask[30:42, 50:62] = 255
    size = canvas_size((80, 120), 40.0, 0.0, "whole")
    m = motion((80, 120), 40.0, 0.0, 0.0, size)
    _png(src / "test" / "crack" / "000.png", cv2.warpAffine(img, m, size, borderMode=cv2.BORDER_REFLECT_101))
    _png(src / "ground_truth" / "crack" / "000_mask.png", cv2.warpAffine(mask, m, size, flags=cv2.INTER_NEAREST))
    out = tmp_path / "out"
    angles = make(src, out)
    assert len(angles) == 5
    for p in (out / "train" / "good").glob("*.png"):  # every copy's lines run one way again: horizontal
        assert abs(abs(orientation(cv2.imread(str(p)))) - 90.0) < 5.0, p.name
    turned = cv2.imread(str(out / "test" / "crack" / "000.png"))
    turned_mask = cv2.imread(str(out / "ground_truth" / "crack" / "000_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert turned_mask.shape == turned.shape[:2] and turned_mask.sum() > 0.8 * 144
    assert turned[turned_mask].mean() > 200  # the bright square went where its mask went
