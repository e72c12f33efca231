"""score-resilience on a tiny U-Net (widths (4, 8) or (8, 16), 16 px) on the CPU: the noise
schedule, the restoration-error map, training, determinism, save/load, cancel, the budget."""

import math

import cv2
import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.config import ConfigError
from core.detectors.registry import create_detector, load_model
from core.detectors.score_resilience.anomaly_map import error_maps, map_to_input_lanczos, mean_filter
from core.detectors.score_resilience.torch_model import EMA, ScoreNet, ScoreNetShape, sigma_k
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part

NAME = "score-resilience"
TINY = {"image_size": 16, "batch_size": 4, "block_out_channels": (4, 8), "norm_num_groups": 4,
        "layers_per_block": 1, "epochs": 4, "lr": 1e-2, "smooth_size": 3}


def parts(n, seed=0, defect=False, size=32):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


@pytest.fixture(scope="module")
def fitted():
    det = create_detector(NAME, TINY, device="cpu")
    det.fit(ImageSource(parts(8)))
    return det


# --------------------------------------------------------------------------- section 4.3
@pytest.mark.parametrize("k", [1e-3, 0.01, 0.3, 0.5, 1.0])
def test_noise_schedule_matches_formula(k):
    expect = math.sqrt((25.0 ** (2 * k) - 1) / (2 * math.log(25.0)))
    assert float(sigma_k(k, 25.0)) == pytest.approx(expect, rel=1e-5)


def test_noise_schedule_reference_values():
    assert float(sigma_k(1.0, 25.0)) == pytest.approx(9.8452, abs=1e-3)  # sqrt(624 / (2 ln 25))
    assert float(sigma_k(0.001, 25.0)) == pytest.approx(0.031674, abs=1e-5)  # the inference level
    ks = torch.tensor([0.2, 0.4, 0.8])
    assert torch.all(sigma_k(ks, 25.0).diff() > 0)
    with pytest.raises(ValueError):
        sigma_k(0.5, 1.0)


# --------------------------------------------------------------------------- section 4.4
def test_error_map_is_restoration_error_over_sigma_squared():
    torch.manual_seed(0)
    b, n, c, h, w = 2, 3, 3, 8, 8
    x = torch.rand(b, c, h, w)
    eps = torch.randn(b * n, c, h, w, dtype=torch.float64)
    s = -eps + 0.1 * torch.randn_like(eps)  # a nearly perfect score
    sk = float(sigma_k(0.001, 25.0))
    xs = x.double().repeat_interleave(n, 0)
    restored = xs + sk * eps + sk * s
    expect = ((xs - restored) ** 2).sum(1).view(b, n, h, w).mean(1) / sk ** 2
    raw, smooth = error_maps(eps, s, n, smooth=1)
    assert torch.allclose(raw.double(), expect, rtol=1e-4)
    assert torch.equal(raw, smooth)


def test_mean_filter_matches_opencv_box_filter():
    rng = np.random.default_rng(0)
    m = rng.random((2, 20, 24)).astype(np.float32)
    ours = mean_filter(torch.from_numpy(m), 5).numpy()
    for i in range(2):
        ref = cv2.blur(m[i], (5, 5), borderType=cv2.BORDER_REFLECT_101)
        assert np.allclose(ours[i], ref, atol=1e-6)
    # a 31x31 kernel on an 8x8 map is clamped to 7x7 (the largest odd size that fits)
    small = rng.random((1, 8, 8)).astype(np.float32)
    ref = cv2.blur(small[0], (7, 7), borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(mean_filter(torch.from_numpy(small), 31).numpy()[0], ref, atol=1e-6)


def test_map_resize_is_lanczos_and_non_negative():
    m = np.zeros((8, 8), np.float32)
    m[3:5, 3:5] = 1.0
    out = map_to_input_lanczos(m, (24, 40, 3))
    assert out.shape == (24, 40) and out.dtype == np.float32
    assert out.min() >= 0.0
    ref = np.maximum(cv2.resize(m, (40, 24), interpolation=cv2.INTER_LANCZOS4), 0)
    assert np.array_equal(out, ref)


# --------------------------------------------------------------------------- model, EMA
def test_score_net_shapes_and_conditioning():
    torch.manual_seed(0)
    net = ScoreNet(ScoreNetShape(in_channels=1, sample_size=16, block_out_channels=(4, 8), layers_per_block=1,
                                 norm_num_groups=4)).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([0.001, 0.001]))
        b = net(x, torch.tensor([0.9, 0.9]))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, b)  # the noise level reaches the network
    with pytest.raises(ValueError, match="norm_num_groups"):
        ScoreNetShape(3, 16, (6, 8), 1, 4).check()
    with pytest.raises(ValueError, match="multiple"):
        ScoreNetShape(3, 18, (4, 8, 8), 1, 4).check()


def test_ema_average_and_warmup():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.5))
    warm = EMA(net, decay=0.9999, warmup=True)
    assert warm.rate() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.updates = 10 ** 7
    assert warm.rate() == pytest.approx(0.9999)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [
    {"norm_num_groups": 3, "block_out_channels": (4, 8)},
    {"image_size": 20, "block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4},
    {"smooth_size": 4},
    {"block_out_channels": (0, 8)},
])
def test_bad_config_is_refused(bad):
    with pytest.raises(ConfigError):
        create_detector(NAME, bad, device="cpu")


def test_paper_defaults():
    cfg = create_detector(NAME, {}, device="cpu").config
    assert (cfg.image_size, cfg.sigma, cfg.k, cfg.n_draws, cfg.batch_size) == (192, 25.0, 0.001, 3, 16)
    assert (cfg.lr, cfg.weight_decay, cfg.ema_decay, cfg.smooth_size) == (1e-4, 1e-3, 0.9999, 31)


# --------------------------------------------------------------------------- training
def test_training_loss_falls():
    det = create_detector(NAME, dict(TINY, epochs=12, batch_size=4), device="cpu")
    det.fit(ImageSource(parts(8)))
    hist = det.meta["loss_history"]
    assert len(hist) == 12 and det.meta["stopped_by"] == "epochs"
    assert np.mean(hist[-3:]) < 0.8 * np.mean(hist[:3]), hist


def test_time_budget_stops_training():
    det = create_detector(NAME, dict(TINY, epochs=100000, max_minutes=0.0005), device="cpu")  # 30 ms
    det.fit(ImageSource(parts(4)))
    assert det.meta["stopped_by"] == "time"
    assert 1 <= det.meta["steps"] < 100000
    assert det.fitted


def test_progress_reports_epoch_loss_and_eta():
    msgs = []
    det = create_detector(NAME, dict(TINY, epochs=2), device="cpu")
    det.fit(ImageSource(parts(4)), progress=lambda d, t, m="": msgs.append((d, t, m)))
    train = [m for _, _, m in msgs if m.startswith("training")]
    assert train and "epoch 2/2" in train[-1] and "loss" in train[-1] and "ETA" in train[-1]
    fractions = [d / t for d, t, _ in msgs]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancel_during_training_leaves_no_model():
    det = create_detector(NAME, dict(TINY, epochs=50), device="cpu")
    token = CancelToken()
    seen = []

    def progress(done, total, msg=""):
        if msg.startswith("training"):
            seen.append(msg)
            if len(seen) == 3:
                token.cancel()

    with pytest.raises(Cancelled):
        det.fit(ImageSource(parts(8)), progress=progress, cancel=token)
    assert len(seen) == 3 and not det.fitted and det.model is None


# --------------------------------------------------------------------------- scoring
def test_maps_restored_image_and_columns(fitted):
    imgs = [parts(1)[0], make_part(np.random.default_rng(3), size=40)[:, :24]]  # square and 40x24
    res = fitted.score(ImageSource(imgs))
    for i, img in enumerate(imgs):
        r = res[i]
        assert r.anomaly_map.shape == img.shape[:2] and r.anomaly_map.dtype == np.float32
        assert np.isfinite(r.anomaly_map).all() and np.isfinite(r.score)
        rest = r.extras["restored"]
        assert rest.shape == (16, 16, 3) and rest.dtype == np.float32
        assert rest.min() >= 0.0 and rest.max() <= 1.0
        assert r.columns["raw_max"] >= r.score  # smoothing cannot raise the maximum


def test_n_draws_run_as_one_batch_and_scores_do_not_depend_on_batching(fitted, monkeypatch):
    imgs = parts(3, seed=4)
    together = fitted.score(ImageSource(imgs))
    calls = []
    forward = fitted.model.forward

    def spy(x, k):
        calls.append(x.shape[0])
        return forward(x, k)

    monkeypatch.setattr(fitted.model, "forward", spy)
    alone = fitted.score(ImageSource(imgs[1:2]))
    assert calls == [fitted.config.n_draws]  # one image: its N draws in one forward pass
    assert alone[0].score == pytest.approx(together[1].score, rel=1e-5)


def test_scoring_is_deterministic_and_seeded(fitted, tmp_path):
    test = ImageSource(parts(2, seed=7) + parts(1, seed=8, defect=True))
    a, b = fitted.score(test), fitted.score(test)
    for i in a:
        assert a[i].score == b[i].score and np.array_equal(a[i].anomaly_map, b[i].anomaly_map)
    fitted.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    c = again.score(test)
    for i in a:
        assert c[i].score == a[i].score and np.array_equal(c[i].anomaly_map, a[i].anomaly_map)
        assert np.array_equal(c[i].extras["restored"], a[i].extras["restored"])
    other = type(again)(again.config.with_overrides({"seed": 5}), device="cpu")
    other.model, other.meta, other.fitted = again.model, again.meta, True
    assert other.score(test)[0].score != a[0].score  # other noise draws


def test_kept_weights_are_the_ema_weights():
    # EMA rate 1 without warm-up never leaves the initial weights: the kept (and saved) model
    # must then equal a freshly initialised network, although training moved the raw weights.
    det = create_detector(NAME, dict(TINY, epochs=2, ema_decay=1.0, ema_warmup=False), device="cpu")
    det.fit(ImageSource(parts(4)))
    torch.manual_seed(det.config.seed)
    init = ScoreNet(det.config.shape(3))
    for key, v in init.state_dict().items():
        assert torch.equal(v, det.model.state_dict()[key]), key
    assert det.meta["steps"] == 2 and det.meta["loss_history"]


def test_grey_training_images():
    det = create_detector(NAME, dict(TINY, epochs=2), device="cpu")
    grey = [p.mean(axis=2, keepdims=True) for p in parts(4)]
    det.fit(ImageSource(grey))
    assert det.meta["channels"] == 1
    r = det.score(ImageSource([grey[0], parts(1)[0]]))  # a colour image scores too (as luma)
    assert r[0].extras["restored"].shape == (16, 16, 1)
    assert np.isfinite(r[1].score)
