import numpy as np
import pytest

from core.detectors.config import ConfigError
from core.detectors.ocsvm import OCSVMConfig
from core.detectors.pixel_gaussian import PixelGaussianConfig
from core.results.threshold import Threshold, calibrate, split_calibration


def test_overrides_coerce_strings_and_reject_bad_values():
    cfg = PixelGaussianConfig().with_overrides({"image_size": "64", "blur_sigma": "1.5"})
    assert cfg.image_size == 64 and cfg.blur_sigma == 1.5
    with pytest.raises(ConfigError, match="unknown setting 'imagesize'"):
        PixelGaussianConfig().with_overrides({"imagesize": "3"})
    with pytest.raises(ConfigError, match="image_size"):
        PixelGaussianConfig().with_overrides({"image_size": "big"})
    with pytest.raises(ConfigError, match="minimum"):
        PixelGaussianConfig().with_overrides({"image_size": "2"})
    with pytest.raises(ConfigError, match="gamma"):
        OCSVMConfig().with_overrides({"gamma": "-1"})
    assert OCSVMConfig().with_overrides({"gamma": "0.5"}).gamma == "0.5"


def test_config_round_trip_reports_unknown_keys():
    cfg, unknown = PixelGaussianConfig.from_dict({"image_size": 48, "future_field": 1})
    assert cfg.image_size == 48 and unknown == ["future_field"]


def test_calibrate_at_fpr():
    scores = np.arange(100, dtype=float)  # 0..99
    t = calibrate(scores, fpr=0.05)
    flagged = sum(t.flags(s) for s in scores)
    assert flagged == 5 and t.value == 94.0
    t0 = calibrate([3.0, 1.0, 2.0], fpr=0.01)  # fewer images than 1/fpr: the max
    assert t0.value == 3.0 and t0.n_calibration == 3 and not t0.flags(3.0) and t0.flags(3.0001)
    with pytest.raises(ValueError):
        calibrate([], 0.1)


def test_threshold_round_trip_and_explicit():
    t = calibrate([1.0, 2.0, 5.0], 0.01)
    assert Threshold.from_dict(t.to_dict()) == t
    assert "held-out" in t.describe()
    with pytest.raises(ValueError):
        Threshold.explicit(float("nan"))


def test_split_calibration_holds_out_ten_percent_at_least_three():
    train, cal = split_calibration(100, seed=1)
    assert len(cal) == 10 and len(train) == 90 and not set(train) & set(cal)
    train, cal = split_calibration(8)
    assert len(cal) == 3 and len(train) == 5
    assert split_calibration(8, seed=3) == split_calibration(8, seed=3)
    with pytest.raises(ValueError, match="too few"):
        split_calibration(3)
