"""Issue 27, finding 7: loaded weights are checked per detector (dtype, shape, finite, value
ranges), and a model folder that fails gets one CheckpointError naming the tensor.

Every trained detector of the registry is built tiny, saved, tampered with (the checksum
recomputed, as a hand-edited folder would be) and loaded again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.data.images import ImageSource
from core.detectors.registry import REGISTRY, create_detector, load_model
from core.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, _sha256
from tests.core.test_detectors import TINY, images

TRAINED = sorted(n for n, cls in REGISTRY.items() if not cls.zero_shot)
QUICK = {"epochs": 1}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("w27")
    out = {}
    for name in TRAINED:
        settings = {**TINY[name], **({k: v for k, v in QUICK.items() if k in TINY[name]})}
        det = create_detector(name, settings, device="cpu")
        det.fit(ImageSource(images(8)))
        out[name] = det.save(root / name)
    return out


def tampered(src, dst, change):
    dst.mkdir(parents=True)
    (dst / CONFIG_NAME).write_bytes((src / CONFIG_NAME).read_bytes())
    tensors = load_file(str(src / WEIGHTS_NAME))
    change(tensors)
    save_file(tensors, str(dst / WEIGHTS_NAME))
    doc = json.loads((dst / CONFIG_NAME).read_text())
    doc["weights_sha256"] = _sha256(dst / WEIGHTS_NAME)
    (dst / CONFIG_NAME).write_text(json.dumps(doc))
    return dst


def refused(folder, *words):
    with pytest.raises(CheckpointError) as info:
        load_model(folder, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and "weights do not fit" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _first_float(tensors):
    return next(k for k in sorted(tensors) if tensors[k].is_floating_point() and tensors[k].numel())


def test_every_trained_detector_is_covered(saved):
    assert sorted(saved) == TRAINED and len(TRAINED) >= 6


def test_untampered_models_still_load(saved):
    for name, folder in saved.items():
        assert load_model(folder, device="cpu").fitted, name


@pytest.mark.parametrize("how", ["nan", "inf", "int8", "other_float", "shape"])
@pytest.mark.parametrize("name", TRAINED)
def test_finding7_tampered_tensors_are_refused_naming_them(saved, tmp_path, name, how):
    key = _first_float(load_file(str(saved[name] / WEIGHTS_NAME)))

    def change(t):
        v = t[key]
        if how == "nan":
            v = v.clone()
            v.view(-1)[0] = float("nan")
        elif how == "inf":
            v = v.clone()
            v.view(-1)[-1] = float("inf")
        elif how == "int8":
            v = v.round().clamp(-100, 100).to(torch.int8)
        elif how == "other_float":  # float32 -> float64, float64 -> float32
            v = v.float() if v.dtype == torch.float64 else v.double()
        else:
            v = torch.cat([v.reshape(-1), v.reshape(-1)[:1]])
        t[key] = v

    refused(tampered(saved[name], tmp_path / "m", change), f"'{key}'")


@pytest.mark.parametrize("name,key,value,words", [
    ("pixel-gaussian", "var", -1.0, ["outside [0, 0.5]", "a variance"]),
    ("pixel-gaussian", "var", 1e30, ["outside [0, 0.5]"]),
    ("pixel-gaussian", "mean", 7.0, ["outside [0, 1]"]),
    ("ocsvm", "alpha", -1.0, ["'alpha'", "dual coefficients"]),
    ("ocsvm", "support", 5.0, ["'support'"]),
    ("sanf", "sem_std", 0.0, ["'sem_std'", "not positive"]),
])
def test_finding7_values_out_of_range_are_refused(saved, tmp_path, name, key, value, words):
    def change(t):
        v = t[key].clone()
        v.view(-1)[0] = value
        t[key] = v

    refused(tampered(saved[name], tmp_path / "m", change), *words)


def test_finding7_ocsvm_gamma_must_be_positive(saved, tmp_path):
    def change(t):
        t["params"] = torch.tensor([-1.0, float(t["params"][1])], dtype=torch.float64)

    refused(tampered(saved["ocsvm"], tmp_path / "m", change), "gamma")


def test_finding15_a_shape_mismatch_names_both_shapes(saved, tmp_path):
    def change(t):
        t["var"] = t["var"][:, :8, :8].contiguous()  # mean keeps its shape

    msg = refused(tampered(saved["pixel-gaussian"], tmp_path / "m", change), "'var'")
    assert "(3, 8, 8)" in msg and "(3, 16, 16)" in msg


def test_a_model_with_valid_weights_scores_as_before(saved):
    det = load_model(saved["pixel-gaussian"], device="cpu")
    res = det.score(ImageSource(images(2, seed=3)))
    assert all(np.isfinite(r.score) for r in res.values())
