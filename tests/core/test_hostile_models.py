"""Issue 15, findings 5 (NaN passes every part) and 6 (untrusted model folders)."""

import json
import math
import os
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.data.images import ImageSource
from core.detectors.config import ConfigError
from core.detectors.registry import create_detector, load_model
from core.engine.workflows import scan_images, train_detector
from core.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, _sha256
from tests.conftest import make_part

SMALL = {"image_size": "16", "blur_sigma": "1"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    det = create_detector("pixel-gaussian", SMALL, "cpu")
    train_detector(det, ImageSource([make_part(rng) for _ in range(8)]))
    return det.save(tmp_path_factory.mktemp("m") / "model")


def copy_model(src, dst):
    dst.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def edit_config(folder, change):
    doc = json.loads((folder / CONFIG_NAME).read_text())
    change(doc)
    (folder / CONFIG_NAME).write_text(json.dumps(doc))
    return folder


def load_within(folder, seconds=20):
    """Load in a thread so that a hang is a test failure, not a stuck run."""
    box = {}

    def run():
        try:
            box["det"] = load_model(folder, device="cpu")
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "loading the model folder hung"
    return box


def assert_refused(folder, match=None):
    box = load_within(folder)
    exc = box.get("exc")
    assert isinstance(exc, CheckpointError), f"expected a CheckpointError, got {exc!r}"
    for leak in ("AttributeError", "TypeError", "IsADirectoryError", "KeyError", "ValueError"):
        assert leak not in str(exc)
    if match:
        assert match in str(exc), str(exc)


# ----------------------------------------------------------------------- finding 5: NaN
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_finding5_non_finite_threshold_in_config_is_refused(model_dir, tmp_path, value):
    m = copy_model(model_dir, tmp_path / "m")
    text = (m / CONFIG_NAME).read_text()
    doc = json.loads(text)
    doc["threshold"]["value"] = 12345.5
    text = json.dumps(doc).replace("12345.5", value)
    (m / CONFIG_NAME).write_text(text)
    assert_refused(m, "threshold")


def test_finding5_nan_config_field_in_model_is_refused(model_dir, tmp_path):
    m = edit_config(copy_model(model_dir, tmp_path / "m"), lambda d: d["config"].update(var_floor=float("nan")))
    assert_refused(m, "var_floor")


@pytest.mark.parametrize("name,setting", [("pixel-gaussian", {"var_floor": "nan"}), ("pixel-gaussian", {"blur_sigma": "nan"}),
                                          ("pixel-gaussian", {"blur_sigma": "inf"}), ("ocsvm", {"nu": "nan"}),
                                          ("ocsvm", {"gamma": "inf"}), ("ocsvm", {"gamma": "nan"})])
def test_finding5_set_nan_or_inf_is_a_config_error(name, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        create_detector(name, setting, "cpu")


def test_finding5_nan_weights_are_refused_and_a_nan_score_is_an_error_per_image(model_dir, tmp_path):
    # since issue 27 (finding 7) NaN weights are refused when the model loads, naming the tensor
    m = copy_model(model_dir, tmp_path / "m")
    tensors = load_file(str(m / WEIGHTS_NAME))
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(m / WEIGHTS_NAME))
    edit_config(m, lambda d: d.update(weights_sha256=_sha256(m / WEIGHTS_NAME)))
    assert_refused(m, "NaN or infinite")
    # a NaN score from anywhere else (here an image holding NaN) is still an error for that image
    det = load_model(model_dir, device="cpu")
    rng = np.random.default_rng(1)
    broken = make_part(rng)
    broken[3, 3, 0] = np.nan
    result = scan_images(det, ImageSource([broken, make_part(rng)]))
    assert len(result.rows) == 1
    assert len(result.skipped) == 1 and "not a number" in result.skipped[0].reason


# -------------------------------------------------------------- finding 6: model folders
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_finding6_config_symlink_to_dev_zero_is_refused(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    (m / CONFIG_NAME).unlink()
    (m / CONFIG_NAME).symlink_to("/dev/zero")
    assert_refused(m, "regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_finding6_weights_symlink_to_dev_zero_is_refused(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    (m / WEIGHTS_NAME).unlink()
    (m / WEIGHTS_NAME).symlink_to("/dev/zero")
    assert_refused(m, "regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_finding6_weights_pipe_does_not_hang(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    (m / WEIGHTS_NAME).unlink()
    os.mkfifo(m / WEIGHTS_NAME)
    assert_refused(m, "regular file")


def test_finding6_oversized_config_is_refused(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    with open(m / CONFIG_NAME, "r+b") as fh:  # sparse: no disk used
        fh.truncate(200 * 1024 * 1024)
    assert_refused(m, "too large")


def test_finding6_config_folder_is_a_one_liner(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    (m / CONFIG_NAME).unlink()
    (m / CONFIG_NAME).mkdir()
    assert_refused(m)


@pytest.mark.parametrize("change", [
    lambda d: d.update(format_version=0),
    lambda d: d.update(format_version=-3),
    lambda d: d.update(format_version=True),
    lambda d: d.update(config="not a mapping"),
    lambda d: d.update(config=[1, 2]),
    lambda d: d.update(detector=["pixel-gaussian"]),
    lambda d: d.update(threshold="high"),
    lambda d: d.update(threshold={"value": "x"}),
    lambda d: d.update(threshold={"value": 1.0, "fpr": 7}),
    lambda d: d.update(threshold={"value": 1.0, "calibration_scores": [1, "a"]}),
    lambda d: d.update(meta=5),
    lambda d: d.update(state_version="two"),
    lambda d: d["config"].update(image_size="huge"),
])
def test_finding6_tampered_headers_are_one_line_refusals(model_dir, tmp_path, change):
    assert_refused(edit_config(copy_model(model_dir, tmp_path / "m"), change))


def test_json_top_level_not_an_object(model_dir, tmp_path):
    m = copy_model(model_dir, tmp_path / "m")
    (m / CONFIG_NAME).write_text("[1, 2, 3]")
    assert_refused(m)


def test_untampered_model_still_loads(model_dir):
    box = load_within(model_dir)
    assert "det" in box and math.isfinite(box["det"].threshold.value)
