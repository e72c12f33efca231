"""The VQ-VAE detector (paper: vq-vae-inner-metrics), built tiny on the CPU."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from core.data.images import ImageSource
from core.detectors.base import NotFittedError
from core.detectors.config import ConfigError
from core.detectors.vqvae import VQVAEConfig, VQVAEDetector
from core.detectors.vqvae.anomaly_map import alignment_map, anomaly_maps, grey_dilate, ssim_map, ssim_window
from core.detectors.vqvae.torch_model import VQVAE, VQVAEShape, cb_mean, cb_nll, vqvae_loss
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part

TINY = dict(image_size=16, hidden=8, n_embeddings=16, embedding_dim=8, epochs=2, batch_size=4, lr=1e-3)


def parts(n, seed=0, defect=False, size=16):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


def varied(n, seed=0, size=16):
    """Squares of different brightness and place: the codebook needs several vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.full((size, size, 3), rng.uniform(0.0, 0.3), np.float32)
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 2, x:x + size // 2] = rng.uniform(0.6, 1.0)
        out.append(img)
    return out


def tiny_model(channels=3, downsamplings=3):
    torch.manual_seed(0)
    return VQVAE(VQVAEShape(in_channels=channels, hidden=8, n_embeddings=16, embedding_dim=8, n_residual=2,
                            downsamplings=downsamplings))


# ------------------------------------------------------------------ model
@pytest.mark.parametrize("channels,down", [(3, 3), (1, 3), (3, 2)])
def test_model_shapes(channels, down):
    model = tiny_model(channels, down)
    x = torch.rand(2, channels, 32, 32)
    out = model(x)
    lat = 32 // 2 ** down  # latent = input / 8 with three downsamplings
    assert out.logits.shape == x.shape
    assert out.z_e.shape == out.z_q.shape == (2, 8, lat, lat)
    assert out.codes.shape == out.alignment.shape == (2, lat, lat)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.alignment).all()
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(1, 1 if channels == 3 else 3, 32, 32))


def test_quantizer_picks_nearest_vector_and_passes_gradients():
    model = tiny_model()
    x = torch.rand(2, 3, 16, 16)
    out = model(x)
    flat = out.z_e.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    e = model.quantizer.codebook.weight.detach()
    d = torch.cdist(flat.double(), e.double()) ** 2
    assert torch.equal(out.codes.flatten(), d.argmin(1))
    assert torch.allclose(out.alignment.flatten().double(), d.min(1).values, rtol=1e-4, atol=1e-6)  # eq. 6
    loss, parts_ = vqvae_loss(out, x, beta=0.25)
    loss.backward()
    assert torch.isfinite(loss) and set(parts_) == {"rec", "align"}
    # straight-through: the encoder learns from the reconstruction; the codebook from eq. 4's 2nd term
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.weight.grad.abs().sum() > 0


def test_continuous_bernoulli_matches_torch_distributions():
    logits = torch.tensor([-30.0, -5.0, -1.0, -0.2, -1e-3, 0.0, 2e-3, 0.05, 1.0, 7.0, 30.0], dtype=torch.float64)
    x = torch.linspace(0, 1, logits.numel(), dtype=torch.float64)
    ref = torch.distributions.ContinuousBernoulli(logits=logits)
    assert torch.allclose(-cb_nll(logits, x).double(), ref.log_prob(x), atol=1e-4)
    assert torch.allclose(cb_mean(logits).double(), ref.mean, atol=1e-4)
    # the CB mean is not sigmoid(logits) away from lambda = 1/2
    assert abs(float(cb_mean(torch.tensor(2.0))) - float(torch.sigmoid(torch.tensor(2.0)))) > 0.05
    # float32 is finite and smooth across the series switch-over
    l32 = torch.linspace(-0.05, 0.05, 101)
    m = cb_mean(l32)
    assert torch.isfinite(cb_nll(l32, torch.rand(101))).all() and (m.diff() > 0).all()


# ------------------------------------------------------------------ maps
def _ssim_numpy(x, y, window, c1, c2):
    k = ssim_window(window).double().numpy()

    def filt(a):  # 'mirror' is torch's 'reflect'
        return ndimage.correlate1d(ndimage.correlate1d(a, k, axis=0, mode="mirror"), k, axis=1, mode="mirror")

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def test_ssim_identical_is_one_and_matches_formula():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ta, tb = torch.tensor(a, dtype=torch.float32)[None, None], torch.tensor(b, dtype=torch.float32)[None, None]
    assert torch.allclose(ssim_map(ta, ta), torch.ones(1, 20, 24), atol=1e-5)
    got = ssim_map(ta, tb, window=7, c1=0.01, c2=0.03)[0].double().numpy()
    assert np.allclose(got, _ssim_numpy(a, b, 7, 0.01, 0.03), atol=1e-5)
    assert got.mean() < 0.9
    # colour: the mean of per-channel SSIM
    t3a, t3b = ta.repeat(1, 3, 1, 1), torch.cat([tb, ta, ta], 1)
    assert torch.allclose(ssim_map(t3a, t3b), (ssim_map(ta, tb) + 2) / 3, atol=1e-5)


def test_alignment_map_upsample_and_dilation():
    am = torch.zeros(1, 4, 4)
    am[0, 1, 2] = 5.0
    up = alignment_map(am, (32, 32), dilation=1)
    assert up.shape == (1, 32, 32)
    assert torch.equal(up[0, 8:16, 16:24], torch.full((8, 8), 5.0)) and up.sum() == 5.0 * 64
    dil = alignment_map(am, (32, 32), dilation=3)  # 3 latent cells a side around the marker
    assert torch.equal(dil[0, 0:24, 8:32], torch.full((24, 24), 5.0)) and dil.sum() == 5.0 * 24 * 24
    assert torch.equal(grey_dilate(am, 1), am)


def test_map_variants():
    x = torch.rand(2, 3, 16, 16)
    rec = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    align = torch.rand(2, 2, 2)
    a = anomaly_maps(x, rec, align, variant="ssim_am", am_dilation=1)
    s = anomaly_maps(x, rec, align, variant="ssim", am_dilation=1)
    assert a.final.shape == s.final.shape == a.alignment.shape == (2, 16, 16)
    assert torch.equal(s.final, s.ssim_anomaly) and torch.allclose(a.final, a.ssim_anomaly * a.alignment)
    zero = anomaly_maps(x, x, align, variant="ssim_am")
    assert zero.ssim_anomaly.abs().max() < 1e-5  # a perfect reconstruction is not anomalous
    with pytest.raises(ValueError):
        anomaly_maps(x, rec, align, variant="nope")


# ------------------------------------------------------------------ detector
def test_config_checks():
    with pytest.raises(ConfigError, match="multiple"):
        VQVAEConfig(image_size=20).validate()
    with pytest.raises(ConfigError):
        VQVAEConfig().with_overrides({"map": "l2"})
    cfg = VQVAEConfig().with_overrides({"map": "ssim", "score_reduce": "max", "epochs": "3"})
    assert (cfg.map, cfg.score_reduce, cfg.epochs) == ("ssim", "max", 3)


def test_fit_loss_falls_codebook_used_and_outputs():
    det = VQVAEDetector(VQVAEConfig(**{**TINY, "epochs": 8, "downsamplings": 2, "lr": 3e-3, "batch_size": 6}), device="cpu")
    messages = []
    det.fit(ImageSource(varied(12)), progress=lambda d, t, m="": messages.append(m))
    hist = det.meta["loss_history"]
    assert len(hist) == 8 and np.isfinite(hist).all() and hist[-1] < hist[0]
    assert det.meta["codes_used"] > 1 and 1.0 < det.meta["codebook_perplexity"] <= 16
    assert any("epoch 8/8 loss" in m and "codes used" in m for m in messages)
    test = varied(2, seed=3) + [make_part(np.random.default_rng(1), size=24)]
    res = det.score(ImageSource(test))
    for i, r in res.items():
        assert r.anomaly_map.shape == test[i].shape[:2] and r.anomaly_map.dtype == np.float32
        rec = r.extras["reconstruction"]
        assert rec.shape == (16, 16, 3) and rec.min() >= 0 and rec.max() <= 1
        assert r.extras["ssim_map"].shape == r.extras["alignment_map"].shape == (16, 16)
        assert np.isfinite(r.anomaly_map).all() and r.score == pytest.approx(r.columns["score_mean"])
        assert r.columns["score_max"] >= r.columns["score_mean"]
        m = r.extras["ssim_map"] * r.extras["alignment_map"]
        assert r.columns["score_max"] == pytest.approx(float(m.max()), rel=1e-5)


def test_grey_training_records_one_channel(tmp_path):
    grey = [p.mean(axis=2, keepdims=True) for p in parts(6)]
    det = VQVAEDetector(VQVAEConfig(**TINY, map="ssim", score_reduce="max"), device="cpu")
    det.fit(ImageSource(grey))
    assert det.meta["channels"] == 1 and det.model.shape.in_channels == 1
    r = det.score(ImageSource(grey[:1] + parts(1)))  # a colour image is converted to grey
    assert r[0].extras["reconstruction"].shape == (16, 16, 1)
    assert r[1].score == pytest.approx(r[1].columns["score_max"])
    assert np.allclose(r[0].extras["ssim_map"], r[0].anomaly_map, atol=1e-6)  # map=ssim, same size


def test_save_load_identical(tmp_path):
    det = VQVAEDetector(VQVAEConfig(**TINY), device="cpu")
    det.fit(ImageSource(parts(6)))
    test = ImageSource(parts(2, seed=4) + parts(1, seed=5, defect=True))
    before = det.score(test)
    again = VQVAEDetector.load(det.save(tmp_path / "m"), device="cpu")
    assert again.meta["channels"] == 3 and again.meta["codes_used"] == det.meta["codes_used"]
    after = again.score(test)
    for i in before:
        assert after[i].score == before[i].score
        assert np.array_equal(after[i].anomaly_map, before[i].anomaly_map)
        for k in before[i].extras:
            assert np.array_equal(after[i].extras[k], before[i].extras[k])


def test_cancel_during_training_leaves_no_model():
    det = VQVAEDetector(VQVAEConfig(**{**TINY, "epochs": 50}), device="cpu")
    token = CancelToken()

    def progress(done, total, msg=""):
        if "epoch 2/" in msg:
            token.cancel()

    with pytest.raises(Cancelled):
        det.fit(ImageSource(parts(8)), progress=progress, cancel=token)
    assert not det.fitted and det.model is None
    with pytest.raises(NotFittedError):
        det.score(ImageSource(parts(1)))


def test_dead_codes_are_reseeded_on_encoder_outputs():
    model = tiny_model()
    z_e = torch.randn(2, 8, 2, 2)
    counts = torch.zeros(16, dtype=torch.long)
    counts[:3] = 1
    before = model.quantizer.codebook.weight.detach().clone()
    VQVAEDetector._reinit_dead(model, counts, z_e, torch.Generator().manual_seed(0))
    after = model.quantizer.codebook.weight.detach()
    assert torch.equal(after[:3], before[:3])  # used codes stay
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 8)
    assert all((flat == row).all(1).any() for row in after[3:])  # dead ones sit on encoder outputs


def test_quantizer_picks_the_float32_nearest_code_under_bf16_autocast() -> None:
    """The nearest-code search (eq. 2) must not run in bfloat16 when training under autocast.

    ``|z|^2 - 2 z.e + |e|^2`` cancels: with latents of norm ~100 and codes 0.05 apart, bf16's
    8-bit mantissa makes the distances noise. A bf16 matmul picked wrong codes, the codebook
    collapsed and a 64 px bottle model trained with ``amp_cpu`` scored pixel AUROC 45 instead of
    92 (docs/bench/bottle-vqvae-64px-whole-10min-bf16-quantizer-bug-cpu.json).
    """
    from core.detectors.vqvae.torch_model import VectorQuantizer

    torch.manual_seed(0)
    q = VectorQuantizer(16, 8)
    centre = torch.full((8,), 30.0)
    with torch.no_grad():
        q.codebook.weight.copy_(centre + 0.05 * torch.randn(16, 8))
    z = (centre + 0.05 * torch.randn(2, 4, 4, 8)).permute(0, 3, 1, 2).contiguous()
    ref_z, ref_codes, ref_align = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, codes, align = q(z)
    assert torch.equal(codes, ref_codes)
    assert z_q.dtype == torch.float32 and align.dtype == torch.float32
    assert torch.allclose(align, ref_align)
