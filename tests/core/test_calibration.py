"""Thresholds an inspector can trust (issue 15): what n calibration scores support, a fitted
tail, and cross-calibration."""

import numpy as np
import pytest

from app.cli import main
from core.data.images import ImageSource
from core.detectors.registry import create_detector
from core.engine.workflows import cross_calibration_scores, train_detector
from core.results.threshold import Threshold, calibrate
from tests.conftest import make_part


def test_three_scores_do_not_support_fpr_001():
    t = calibrate([1.0, 2.0, 3.0], 0.01)
    assert t.value == 3.0 and t.min_supported_fpr == pytest.approx(1 / 3)
    w = t.support_warning()
    assert "3 calibration images" in w and "1/3" in w and "100 are needed" in w
    assert "too few" in t.describe()
    enough = calibrate(np.linspace(0, 1, 200), 0.01)
    assert enough.support_warning() == "" and "too few" not in enough.describe()
    assert Threshold.explicit(2.0).support_warning() == ""


def test_tail_extrapolates_beyond_the_largest_score():
    rng = np.random.default_rng(0)
    scores = np.exp(rng.normal(1.0, 0.5, 400))
    t = calibrate(scores, 0.001, estimator="tail")
    true_q = np.exp(1.0 + 0.5 * 3.090232)  # log-normal 99.9 % quantile
    assert abs(np.log(t.value) - np.log(true_q)) < 0.15
    assert calibrate(scores[:20], 0.001, estimator="tail").value > scores[:20].max()
    assert t.estimator == "tail" and t.support_warning() == ""  # 0.001 >= (1/400)/10
    assert calibrate(scores, 1e-5, estimator="tail").support_warning()  # far beyond the data
    back = Threshold.from_dict(t.to_dict())
    assert back.estimator == "tail" and back.value == t.value


def test_kfold_calibrates_on_every_good_image():
    rng = np.random.default_rng(0)
    good = ImageSource([make_part(rng) for _ in range(12)])
    det = create_detector("pixel-gaussian", {"image_size": "16", "blur_sigma": "1"}, "cpu")
    oof = cross_calibration_scores(det, good, 4)
    assert len(oof) == 12 and all(np.isfinite(oof))
    rep = train_detector(det, good, calibration="kfold", folds=4, fpr=0.1)
    assert rep.threshold.n_calibration == 12 and rep.threshold.scheme == "kfold-4" and rep.n_train == 12
    assert sorted(rep.threshold.calibration_scores) == pytest.approx(sorted(oof))
    assert "kfold-4 cross-calibration" in rep.threshold.describe()
    assert Threshold.from_dict(rep.threshold.to_dict()).scheme == "kfold-4"


def test_cli_warns_when_the_target_is_below_what_the_images_support(tiny_parts, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--set", "image_size=16"]) == 0
    err = capsys.readouterr().err
    assert "warning: target FPR 0.01 is below what 3 calibration images can support" in err
    out = tmp_path / "o"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--out", str(out), "--fpr", "0.5"]) == 0
    assert "warning" not in capsys.readouterr().err  # 0.5 >= 1/3
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(tmp_path / "k"),
                 "--set", "image_size=16", "--calibration", "kfold", "--tail"]) == 0
    err = capsys.readouterr().err
    assert "12 normal images (kfold-5 cross-calibration), fitted tail" in err and "warning" not in err
