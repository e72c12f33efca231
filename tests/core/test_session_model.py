"""core.engine.session_model: the model a session keeps (issue 26, part 1)."""

from __future__ import annotations

import pytest

from core.data.images import ImageSource
from core.detectors.pixel_gaussian import PixelGaussianConfig, PixelGaussianDetector
from core.engine.jobs import FitJob
from core.engine.session_model import keep_model, load_kept_model, scan_keeping_model, trained_on
from core.engine.session_scan import model_fingerprint
from core.io.checkpoint import CheckpointError, read_header
from core.runtime.cancel import CancelToken
from core.session import open_session

SMALL = {"image_size": 32, "batch_size": 4, "blur_sigma": 1.0}


def fitted(good):
    return FitJob("pixel-gaussian", good, overrides=SMALL, device="cpu").run(lambda *a: None, CancelToken(),
                                                                          lambda *a: None).detector


def test_a_kept_model_is_saved_beside_the_session_once_and_loads_back(tiny_parts, tmp_path):
    det = fitted(tiny_parts / "good")
    assert trained_on(det) == (tiny_parts / "good").resolve()
    with open_session(tmp_path / "s.db", folder=tiny_parts / "batch") as s:
        rec = keep_model(s, det)
        assert rec.path.parent == s.models_dir() == tmp_path / "s.models"
        assert rec.fingerprint == model_fingerprint(det) and rec.good_folder == (tiny_parts / "good").resolve()
        assert read_header(rec.path)["weights_sha256"] == rec.weights_sha256
        mtime = (rec.path / "weights.safetensors").stat().st_mtime_ns
        assert keep_model(s, det) == rec and (rec.path / "weights.safetensors").stat().st_mtime_ns == mtime
        back = load_kept_model(rec, "cpu")
        assert model_fingerprint(back) == rec.fingerprint and back.threshold.value == det.threshold.value
        out, kept, why = scan_keeping_model(s, back, ImageSource.from_folder(tiny_parts / "batch"))
        assert why == "" and kept == rec and s.model(s.run(out.run_id).fingerprint) == rec  # the run names it


def test_a_kept_model_whose_weights_changed_is_refused(tiny_parts, tmp_path):
    with open_session(tmp_path / "s.db", folder=tiny_parts / "batch") as s:
        rec = keep_model(s, fitted(tiny_parts / "good"))
        other = PixelGaussianDetector(PixelGaussianConfig(**SMALL), device="cpu")
        from core.engine.workflows import train_detector

        train_detector(other, ImageSource.from_folder(tiny_parts / "batch"))
        other.save(rec.path)  # someone put another model in the session's folder
        with pytest.raises(CheckpointError, match="not the one the session recorded"):
            load_kept_model(rec, "cpu")
