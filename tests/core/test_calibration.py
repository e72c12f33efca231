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
    # pixel-gaussian's default: 12 good images cross-calibrated, the fitted tail read at 0.01
    assert "12 normal images (kfold-5 cross-calibration), fitted tail" in capsys.readouterr().err
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(tmp_path / "held"),
                 "--set", "image_size=16", "--calibration", "holdout"]) == 0
    err = capsys.readouterr().err  # 3 held out: the tail (auto) extrapolates, and says so
    assert "warning: target FPR 0.01 is far below what 3 calibration images support" in err
    out = tmp_path / "o"
    assert main(["scan", str(tiny_parts / "batch"), "--detector", "pixel-gaussian", "--model", str(model),
                 "--out", str(out), "--fpr", "0.5"]) == 0
    assert "warning" not in capsys.readouterr().err  # 0.5 >= 1/3
    assert main(["train", str(tiny_parts / "good"), "--detector", "pixel-gaussian", "--model", str(tmp_path / "k"),
                 "--set", "image_size=16", "--calibration", "kfold", "--tail"]) == 0
    err = capsys.readouterr().err
    assert "12 normal images (kfold-5 cross-calibration), fitted tail" in err and "warning" not in err


def _tiny_patchcore(**extra):
    return create_detector("patchcore", {"backbone": "tiny-random", "image_size": "32", "batch_size": "3", **extra}, "cpu")


def _generic_oof(det, good, folds):
    """The out-of-fold scores of K independent trainings (the path without a fold trainer)."""
    import copy

    from core.engine import workflows

    original = type(det).fold_trainer
    type(det).fold_trainer = lambda self, *a, **k: None
    try:
        return workflows.cross_calibration_scores(copy.deepcopy(det), good, folds)
    finally:
        type(det).fold_trainer = original


def test_patchcore_kfold_extracts_once_and_scores_as_k_trainings_would(monkeypatch):
    """patchcore's fold models are banks of features extracted once; with every patch in the bank
    (8 images x 256 patches < min_bank) they score exactly as K separate trainings, up to float
    rounding, and the final fit reuses the extraction: one extraction for the whole kfold."""
    from core.detectors.patchcore.detector import PatchCoreDetector

    rng = np.random.default_rng(3)
    good = ImageSource([make_part(rng) for _ in range(8)])
    det = _tiny_patchcore()
    expected = _generic_oof(det, good, 4)
    calls = []
    real = PatchCoreDetector._extract
    monkeypatch.setattr(PatchCoreDetector, "_extract", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    oof = cross_calibration_scores(det, good, 4)
    assert len(calls) == 1 and oof == pytest.approx(expected, rel=1e-4)
    rep = train_detector(det, good, calibration="kfold", folds=4, fpr=0.1, self_check=False)
    assert len(calls) == 2  # the cross-calibration's extraction, reused by the final fit
    assert rep.n_train == 8 and det.meta["n_train"] == 8 and det.meta["bank_size"] == 8 * 256
    assert sorted(rep.threshold.calibration_scores) == pytest.approx(sorted(expected), rel=1e-4)
    assert det._extracted is None  # the final fit consumed it
    plain = _tiny_patchcore()
    plain.fit(good)
    test = ImageSource([make_part(rng) for _ in range(3)])
    assert [r.score for r in det.score(test).values()] == pytest.approx([r.score for r in plain.score(test).values()],
                                                                         rel=1e-5)


def test_patchcore_fold_trainer_with_standardize_trains_copies():
    det = _tiny_patchcore(stage_weighting="standardize")
    assert det.fold_trainer(ImageSource([np.zeros((8, 8, 3), np.float32)] * 4)) is None


def test_patchcore_kfold_cancelled_mid_fold_leaves_the_trained_model(monkeypatch):
    from core.runtime.cancel import Cancelled, CancelToken

    rng = np.random.default_rng(4)
    good = ImageSource([make_part(rng) for _ in range(8)])
    det = _tiny_patchcore()
    det.fit(good)
    bank, model = det.bank.clone(), det.model
    token = CancelToken()

    def progress(done, total, what):
        if "fold 2 of 4" in what:
            token.cancel()

    with pytest.raises(Cancelled):
        train_detector(det, good, calibration="kfold", folds=4, progress=progress, cancel=token, self_check=False)
    assert det.model is model and torch_equal(det.bank, bank)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
