"""``ldm-zero-shot``: the real diffusers loading code on a tiny saved pipeline, the noise
error on a toy set, the batch fallback (training inside score, progress, cancel), and the
grouped scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.config import ConfigError
from core.detectors.ldm_zero_shot import LDMZeroShotConfig, LDMZeroShotDetector
from core.detectors.ldm_zero_shot.noise_error import draw_noise, noise_errors, pick_timesteps
from core.detectors.ldm_zero_shot.pipeline import PipelineError, load_diffusion_model
from core.detectors.registry import create_detector
from core.engine.workflows import scan_images
from core.io.export import results_csv
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part

#: The batch fallback, tiny.
TINY_BATCH = {"image_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "epochs": 2, "timesteps": 3,
              "train_timesteps": 50, "batch_size": 4}


def parts(n, seed=0, defect=False, size=24):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A tiny Stable-Diffusion-shaped pipeline saved with ``save_pretrained`` (VAE, text-conditioned
    U-Net, DDPM scheduler, CLIP text encoder and tokenizer), and its null-prompt embedding."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3, "a": 4}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=6)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=6, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=8)).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe")
    with torch.no_grad():
        ids = tokenizer([""], padding="max_length", max_length=6, return_tensors="pt").input_ids
        null = text_encoder(ids)[0]
    return root / "pipe", pipe, null


def test_loader_round_trips_a_tiny_saved_pipeline(tiny_pipeline):
    folder, pipe, null = tiny_pipeline
    m = load_diffusion_model(str(folder))
    for mine, theirs in ((m.unet, pipe.unet), (m.vae, pipe.vae)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(m.null_embedding, null)  # the empty prompt, padded to the tokenizer's length
    assert m.null_embedding.shape == (1, 6, 8)
    assert torch.equal(m.alphas_cumprod, pipe.scheduler.alphas_cumprod)
    assert (m.sample_size, m.vae_factor, m.in_channels, m.prediction_type) == (16, 2, 3, "epsilon")
    assert m.latent_scale == pytest.approx(pipe.vae.config.scaling_factor)


def test_pretrained_scores_are_per_image_and_the_same_in_any_batch(tiny_pipeline):
    folder, _pipe, _null = tiny_pipeline
    det = create_detector("ldm-zero-shot", {"model": str(folder), "timesteps": 4, "batch_size": 3}, device="cpu")
    imgs = parts(3) + parts(1, seed=4, defect=True) + [parts(1, seed=5)[0].mean(2, keepdims=True)]  # grey too
    res = det.score(ImageSource(imgs))
    assert sorted(res) == list(range(5))
    for i, r in res.items():
        assert np.isfinite(r.score) and r.anomaly_map.shape == imgs[i].shape[:2]
        errs = [float(v) for v in r.columns["timestep_errors"].split(";")]
        assert len(errs) == 4 and r.score == pytest.approx(np.mean(errs), rel=1e-5)
        assert r.anomaly_map.mean() == pytest.approx(r.score, rel=0.05)  # the map's mean is the score
    assert det.meta["variant"] == "pretrained" and len(det.meta["timesteps"]) == 4
    alone = det.score(ImageSource([imgs[3]]))[0]  # same noise draws for every image
    assert alone.score == pytest.approx(res[3].score, rel=1e-5)


def test_noise_error_is_larger_for_an_image_the_model_was_not_fitted_to():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    toy = [(0.3 + 0.4 * (xx + yy)[..., None] / 2 + 0.02 * rng.normal(size=(8, 8, 1))).astype(np.float32)
           for _ in range(12)]
    stranger = (rng.random((8, 8, 1)) > 0.5).astype(np.float32)  # a checkerboard-like binary image
    cfg = LDMZeroShotConfig(**{**TINY_BATCH, "epochs": 12, "train_batch_size": 12, "lr": 3e-3, "timesteps": 6})
    det = LDMZeroShotDetector(cfg, device="cpu")
    det._train_on_batch(toy, None, None)  # the fitted model only; scoring below is by hand
    sched = det._batch_scheduler
    ts = pick_timesteps(sched, 6)
    eps = draw_noise((1, 8, 8), 6, seed=0)
    z = torch.from_numpy(np.stack([toy[0], stranger]).transpose(0, 3, 1, 2)) * 2 - 1
    with torch.inference_mode():
        per_t, maps = noise_errors(det.batch_net, z, ts, eps, sched.alphas_cumprod)
    assert per_t.shape == (2, 6) and maps.shape == (2, 8, 8)
    assert per_t[1].mean() > 1.5 * per_t[0].mean()


def test_batch_fallback_trains_inside_score_with_progress():
    det = create_detector("ldm-zero-shot", TINY_BATCH, device="cpu")
    assert det.fitted and det.zero_shot  # nothing to fit beforehand
    calls = []
    res = det.score(ImageSource(parts(5)), progress=lambda d, t, m: calls.append((d, t, m)))
    assert len(res) == 5 and all(np.isfinite(r.score) for r in res.values())
    assert any("training on the batch" in m for _d, _t, m in calls)
    fracs = [d / t for d, t, _m in calls]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert det.meta["variant"] == "batch" and det.meta["n_batch"] == 5


def test_batch_fallback_cancel_mid_training():
    det = create_detector("ldm-zero-shot", {**TINY_BATCH, "epochs": 50, "train_batch_size": 2}, device="cpu")
    token = CancelToken()
    seen = []

    def progress(done, total, msg=""):
        seen.append(msg)
        if "epoch" in msg:
            token.cancel()

    with pytest.raises(Cancelled):
        det.score(ImageSource(parts(6)), progress=progress, cancel=token)
    assert not any(m.startswith("scored") for m in seen)


def test_zero_shot_scan_groups_the_batch_and_a_single_image_is_explained():
    det = create_detector("ldm-zero-shot", {**TINY_BATCH, "group": "kmeans"}, device="cpu")
    res = scan_images(det, ImageSource(parts(5) + parts(2, seed=3, defect=True)))
    assert res.grouping is not None and res.grouping.method == "kmeans"
    groups = [r.columns["group"] for r in res.rows]
    assert set(groups) <= {"normal", "suspect"} and groups.count("suspect") == res.grouping.sizes[1]
    assert [r.flagged for r in res.rows] == [g == "suspect" for g in groups]
    assert "group" in results_csv(res.rows).splitlines()[0]
    one = scan_images(det, ImageSource(parts(1)))
    assert one.grouping is None and "at least 2 images" in one.grouping_note
    assert one.rows[0].flagged is None


def test_model_setting_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        LDMZeroShotConfig(model=str(tmp_path / "no_such_pipeline")).validate()
    with pytest.raises(ConfigError, match="group"):
        create_detector("ldm-zero-shot", {"group": "spectral"})
    LDMZeroShotConfig(model="some-org/some-model").validate()  # a hub id is accepted (loaded at scoring)
    (tmp_path / "empty").mkdir()
    det = create_detector("ldm-zero-shot", {"model": str(tmp_path / "empty")}, device="cpu")
    with pytest.raises(PipelineError, match="model_index.json"):
        det.score(ImageSource(parts(2)))


def test_offline_hub_id_gives_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(PipelineError, match="no network"):
        load_diffusion_model("anomaly-inspector-tests/not-a-real-model")


# --------------------------------------------------------------------------- batch-latent
LATENT = {**TINY_BATCH, "model": "batch-latent", "latent_backbone": "tiny-random", "image_size": 16}


def test_batch_latent_scores_in_a_frozen_encoders_standardised_feature_space():
    """The batch model is trained on the batch's latents (a frozen encoder's map, standardised
    with the batch's own per-channel statistics), never on labels; maps come back at image size."""
    from core.detectors.common import to_tensor_batch

    det = create_detector("ldm-zero-shot", LATENT, device="cpu")
    imgs = [make_part(np.random.default_rng(i), size=24) for i in range(6)]
    res = det.score(ImageSource(imgs))
    assert sorted(res) == list(range(6)) and det.meta["variant"] == "batch-latent"
    assert all(np.isfinite(r.score) and r.anomaly_map.shape == (24, 24) for r in res.values())
    enc = det._encoder
    assert not any(p.requires_grad for p in enc.parameters())
    z = enc(to_tensor_batch(imgs, 16, 3))
    assert z.shape == (6, enc.channels, 8, 8)  # tiny-random: stride 2
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(enc.channels), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(enc.channels), atol=1e-3)
    assert det.batch_net.shape.in_channels == enc.channels and det.batch_net.shape.sample_size == 8


def test_batch_latent_size_must_fit_the_encoders_stride():
    from core.detectors.registry import make_config

    with pytest.raises(ConfigError, match="multiple of the encoder's stride 8"):
        make_config("ldm-zero-shot", {"model": "batch-latent", "image_size": 100})
    assert make_config("ldm-zero-shot", {"model": "batch-latent"}).batch_size_px() == 128
