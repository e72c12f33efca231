import csv
import json

import numpy as np
import pytest

from core.data.images import ImageSource
from core.detectors.base import FitError
from core.detectors.registry import create_detector
from core.engine.jobs import FitJob, ScanJob, run_inline
from core.engine.workflows import scan_images, select_subset, train_detector
from core.io.export import export_scan, heatmap_names
from core.results.threshold import Threshold
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part, write_png

SMALL = {"image_size": 16, "batch_size": 4, "blur_sigma": 1.0}


def test_train_calibrates_on_held_out_images(tiny_parts):
    det = create_detector("pixel-gaussian", SMALL, device="cpu")
    rep = train_detector(det, ImageSource.from_folder(tiny_parts / "good"), fpr=0.01, calibration="holdout",
                         estimator="empirical")
    assert rep.n_calibration == 3 and rep.n_train == 9
    thr = det.threshold
    assert thr.method == "calibrated" and thr.n_calibration == 3
    assert thr.value == max(thr.calibration_scores)


def test_explicit_threshold_uses_all_images(tiny_parts):
    det = create_detector("pixel-gaussian", SMALL, device="cpu")
    rep = train_detector(det, ImageSource.from_folder(tiny_parts / "good"), threshold=5.0, max_train=7)
    assert rep.n_train == 7 and rep.n_calibration == 0
    assert det.threshold.value == 5.0 and det.threshold.method == "explicit"
    assert det.threshold.settings == det.config.to_dict()


def test_too_few_good_images_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(tmp_path / f"{i}.png", make_part(rng))
    det = create_detector("pixel-gaussian", SMALL, device="cpu")
    with pytest.raises(FitError, match="too few"):
        train_detector(det, ImageSource.from_folder(tmp_path), calibration="holdout")
    # the default cross-calibrates so few images (3 folds of one), and says what that supports
    rep = train_detector(det, ImageSource.from_folder(tmp_path))
    assert rep.threshold.scheme == "kfold-3" and rep.n_train == 3 and rep.threshold.support_warning()
    with pytest.raises(FitError, match="no good images"):
        train_detector(det, ImageSource([]))


def test_select_subset():
    assert select_subset(5, None, 0) == [0, 1, 2, 3, 4]
    sub = select_subset(100, 10, 0)
    assert len(sub) == 10 and sub == sorted(sub) and sub == select_subset(100, 10, 0)


def test_scan_flags_defects_and_exports(tiny_parts, tmp_path):
    det = create_detector("pixel-gaussian", SMALL, device="cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    (tiny_parts / "batch" / "broken.png").write_text("not an image")
    seen = []
    res = scan_images(det, ImageSource.from_folder(tiny_parts / "batch"), on_row=lambda i, r: seen.append(i))
    assert len(res.rows) == 8 and len(seen) == 8
    assert [s.path.name for s in res.skipped] == ["broken.png"]
    flagged = {r.path.name for r in res.flagged}
    assert {"bad0.png", "bad1.png", "bad2.png", "bad3.png"} <= flagged
    out = tmp_path / "out"
    written = export_scan(out, res)
    rows = list(csv.DictReader(open(written["results"])))
    assert [r["path"] for r in rows] == [str(r.path) for r in res.rows]
    assert {r["flagged"] for r in rows} <= {"true", "false"}
    assert (out / "flagged.txt").read_text().splitlines() == [str(r.path) for r in res.flagged]
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert skipped[0]["path"].endswith("broken.png") and "decodable" in skipped[0]["reason"]
    maps = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert maps == sorted(f"{r.path.stem}.png" for r in res.rows)
    scale = json.loads((out / "heatmap_scale.json").read_text())
    assert scale["colormap"] == "inferno" and scale["max"] > scale["min"]
    # re-thresholding changes the flags, not the scores
    res.apply_threshold(Threshold.explicit(1e9))
    assert res.flagged == []


def test_heatmap_names_disambiguate_repeated_stems(tmp_path):
    from core.results import ScanRow

    rows = [ScanRow(tmp_path / "a" / "000.png", 1.0, True, (4, 4)), ScanRow(tmp_path / "b" / "000.png", 1.0, True, (4, 4)),
            ScanRow(tmp_path / "b" / "001.png", 1.0, True, (4, 4))]
    names = heatmap_names(rows)
    assert len(set(names)) == 3 and names[2] == "001.png" and names[0].endswith("a__000.png")


def test_jobs_inline_with_partials_and_cancel(tiny_parts):
    out = run_inline(FitJob("pixel-gaussian", tiny_parts / "good", overrides=SMALL, device="cpu"))
    det = out.detector
    assert det.fitted and out.report.threshold is not None
    partials = []
    result = run_inline(ScanJob(det, ImageSource.from_folder(tiny_parts / "batch")), emit=partials.append)
    assert len(partials) == len(result.rows) == 8
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_inline(ScanJob(det, ImageSource.from_folder(tiny_parts / "batch")), cancel=token)


# ------------------------------------------------------------------ thresholds and changed settings
def test_threshold_records_settings_and_detects_score_changes(tmp_path) -> None:
    from core.detectors.registry import create_detector, load_model
    from core.engine.workflows import recalibrate

    rng = np.random.default_rng(3)
    good = ImageSource([np.clip(0.5 + rng.normal(0, 0.03, (16, 16)), 0, 1).astype(np.float32) for _ in range(30)])
    det = create_detector("pixel-gaussian", {"image_size": "16", "batch_size": "4"}, "cpu")
    train_detector(det, good)
    assert det.threshold.settings == det.config.to_dict()
    assert det.threshold_mismatch() == []
    det.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m", "cpu")
    assert loaded.threshold.settings == det.threshold.settings
    loaded.config = loaded.config.with_overrides({"batch_size": "2"})  # does not change a score
    assert loaded.threshold_mismatch() == []
    loaded.config = loaded.config.with_overrides({"blur_sigma": "2.5"})
    assert loaded.threshold_mismatch() == ["blur_sigma: 4.0 -> 2.5"]
    old = loaded.threshold
    thr = recalibrate(loaded, good)
    assert loaded.threshold is thr and thr.settings["blur_sigma"] == 2.5 and thr.fpr == old.fpr
    assert loaded.threshold_mismatch() == []
    assert thr.n_calibration == old.n_calibration and thr.value != old.value
    # The same held-out images train_detector chose: a model trained at 2.5 calibrates alike.
    fresh = create_detector("pixel-gaussian", {"image_size": "16", "batch_size": "4", "blur_sigma": "2.5"}, "cpu")
    train_detector(fresh, good)
    assert thr.value == pytest.approx(fresh.threshold.value)


def test_a_setting_added_after_the_threshold_counts_at_its_legacy_value(tiny_parts) -> None:
    """A model saved before ``search_dims`` existed: its threshold's record lacks the key, and was
    set under the exact search (the legacy 0), so asking for another search is a mismatch."""
    from core.detectors.registry import create_detector

    det = create_detector("patchcore", {"backbone": "tiny-random", "image_size": "32", "batch_size": "4",
                                        "coreset_ratio": "0.5"}, "cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    del det.threshold.settings["search_dims"]  # as an older model's record reads
    assert det.threshold_mismatch() == []
    det.config = det.config.with_overrides({"search_dims": "2"})
    assert det.threshold_mismatch() == ["search_dims: 0 -> 2"]


def test_threshold_without_recorded_settings_is_trusted() -> None:
    from core.detectors.registry import create_detector
    from core.results.threshold import Threshold

    det = create_detector("pixel-gaussian", {"image_size": "16"}, "cpu")
    det.threshold = Threshold.from_dict({"value": 1.0, "method": "explicit"})  # a model saved before the record
    det.config = det.config.with_overrides({"blur_sigma": "2.5"})
    assert det.threshold.settings is None and det.threshold_mismatch() == []
