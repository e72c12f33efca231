"""``mutual`` (MuSc): the reference sample, the exact nearest-patch distances, the interval average and
the re-scoring against brute-force references; the detector's patch scores against a brute force on a
small batch; the sampled version against the full one; incremental re-scoring of a grown batch; the
batch edge cases (one image, identical images); an obvious defect ranked first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.images import ImageSource
from core.detectors.base import FitError
from core.detectors.config import ConfigError
from core.detectors.mutual.scoring import (
    interval_average,
    interval_count,
    item_keys,
    pair_min_distances,
    reference_sets,
    rescore,
    squared_norms,
)
from core.detectors.registry import create_detector
from core.engine.workflows import scan_images
from core.runtime.cancel import Cancelled, CancelToken
from tests.conftest import make_part

TINY = {"backbone": "tiny-random", "image_size": 32, "batch_size": 4, "blur_sigma": 1.0}


def parts(n, seed=0, defect=False, size=32):
    rng = np.random.default_rng(seed)
    return [make_part(rng, size=size, defect=defect) for _ in range(n)]


def keys(n, seed=0):
    rng = np.random.default_rng(seed)
    return item_keys([rng.bytes(16) for _ in range(n)])


# ----------------------------------------------------------------------------- the reference sample
def test_reference_sets_are_a_seeded_sample_of_other_images():
    k = keys(40)
    refs = reference_sets(k, 6, seed=3)
    assert all(len(r) == 6 and i not in r and list(r) == sorted(set(r)) for i, r in enumerate(refs))
    assert all((a == b).all() for a, b in zip(refs, reference_sets(k, 6, seed=3)))
    assert any((a != b).any() for a, b in zip(refs, reference_sets(k, 6, seed=4)))


def test_reference_sets_are_every_other_image_when_the_sample_is_the_batch():
    k = keys(7)
    for r in (0, 6, 100):
        refs = reference_sets(k, r, seed=0)
        assert [list(x) for x in refs] == [[j for j in range(7) if j != i] for i in range(7)]


def test_a_grown_batch_changes_old_references_only_for_new_images():
    """Rendezvous hashing: an old image's references in the grown batch are its old references
    or new images, never another old image (so its cached pairs stay valid)."""
    k_old, k_new = keys(30), keys(12, seed=1)
    old = reference_sets(k_old, 5, seed=0)
    grown = reference_sets(np.concatenate([k_old, k_new]), 5, seed=0)
    changed = 0
    for i in range(30):
        old_part = {j for j in grown[i] if j < 30}
        assert old_part <= set(old[i])
        changed += len(old_part) < 5
    assert 0 < changed < 30


def test_identical_images_are_distinct_items():
    d = [b"a" * 16, b"a" * 16, b"b" * 16]
    k = item_keys(d)
    assert len(set(k.tolist())) == 3


# ----------------------------------------------------------------------------- nearest patches
def _brute(q, r):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - r[None, :, :].astype(np.float64)) ** 2).sum(-1))
    return d.min(1), d.min(0)


@pytest.mark.parametrize("search", ["torch", "faiss"])
def test_pair_min_distances_match_brute_force(search, monkeypatch):
    from core.detectors.mutual import scoring

    monkeypatch.setattr(scoring, "BLOCK_ELEMENTS", 25 * 20)  # several blocks of references
    g = torch.Generator().manual_seed(0)
    q = torch.randn(25, 6, generator=g)
    refs = [torch.randn(n, 6, generator=g) for n in (20, 7, 31, 12)]
    to_refs, from_refs = pair_min_distances(q, refs, search)
    for j, r in enumerate(refs):
        a, b = _brute(q.numpy(), r.numpy())
        np.testing.assert_allclose(to_refs[:, j], a, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(from_refs[j], b, rtol=1e-4, atol=1e-4)
    half = [r.half() for r in refs]
    again, _ = pair_min_distances(q, half, search, both=False, norms=[squared_norms(r) for r in half])
    np.testing.assert_allclose(again, to_refs, rtol=1e-2, atol=1e-2)


def test_interval_average_is_the_mean_of_the_lowest_fraction():
    d = np.array([[0.1, 5.0], [0.5, 1.0], [0.2, 3.0], [0.9, 2.0], [0.3, 4.0]])  # 5 references, 2 patches
    assert interval_count(5, 0.4) == 2 and interval_count(5, 0.1) == 1 and interval_count(2, 0.3) == 1
    np.testing.assert_allclose(interval_average(d, 0.4, axis=0), [0.15, 1.5], rtol=1e-6)
    np.testing.assert_allclose(interval_average(d, 1.0, axis=0), d.mean(0), rtol=1e-6)
    np.testing.assert_allclose(interval_average(d.T, 0.1, axis=1), [0.1, 1.0], rtol=1e-6)


def _mmo(w, s, ks):
    """The authors' RsCIN/MMO, written out with loops."""
    n = len(s)
    s = (s - s.min()) / (s.max() - s.min())
    out = []
    for k in ks:
        new = np.zeros(n)
        for i in range(n):
            keep = np.argsort(-w[i], kind="stable")[:k]
            new[i] = (w[i, keep] * s[keep]).sum() / w[i, keep].sum()
        out.append(new)
    return np.mean(out, axis=0)


def test_rescore_matches_the_papers_mmo():
    rng = np.random.default_rng(0)
    g = np.abs(rng.normal(size=(9, 5)))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    s = rng.random(9)
    np.testing.assert_allclose(rescore(s, g, (1, 2, 3)), _mmo(g @ g.T, s, (1, 2, 3)), rtol=1e-9)
    np.testing.assert_array_equal(rescore(s, g, (0,)), s)
    # k = 1 keeps each image alone: the normalised scores themselves
    np.testing.assert_allclose(rescore(s, g, (1,)), (s - s.min()) / (s.max() - s.min()), rtol=1e-9)
    assert (rescore(np.full(4, 2.0), g[:4], (1, 2)) == 0).all()  # no spread: all equal


# ----------------------------------------------------------------------------- the detector
def test_patch_scores_match_a_brute_force_mutual_scoring():
    """3.3 on a small batch: each patch's distances to its nearest patch in each reference image,
    the mean of the lowest 30 %, averaged over the degrees; computed here from the detector's own
    patch features with float64 loops."""
    imgs = parts(6) + parts(1, seed=2, defect=True)
    det = create_detector("mutual", {**TINY, "patch_sizes": (1, 3), "references": 4}, "cpu")
    got = det.patch_scores(imgs)
    items = det._features(imgs, None, None, None)
    refs = reference_sets(item_keys([it.digest for it in items]), 4, 0)
    feats = {r: det._degree_features(det.model, [it.digest for it in items], r) for r in (1, 3)}
    for i, it in enumerate(items):
        per_degree = []
        for r in (1, 3):
            q = feats[r][it.digest].double().numpy()
            d = np.stack([_brute(q, feats[r][items[j].digest].double().numpy())[0] for j in refs[i]])
            k = max(1, int(0.3 * len(refs[i])))  # the authors' floor, at least one
            per_degree.append(np.sort(d, axis=0)[:k].mean(0))
        np.testing.assert_allclose(got[i].ravel(), np.mean(per_degree, 0), rtol=3e-3, atol=1e-3)


def test_sampled_scores_equal_the_full_comparison_when_the_sample_is_the_batch():
    imgs = parts(7) + parts(2, seed=3, defect=True)
    full = create_detector("mutual", {**TINY, "references": 0}, "cpu").score(imgs)
    for r in (8, 50):
        sampled = create_detector("mutual", {**TINY, "references": r}, "cpu").score(imgs)
        assert [sampled[i].score for i in range(9)] == [full[i].score for i in range(9)]
        assert all(np.array_equal(sampled[i].anomaly_map, full[i].anomaly_map) for i in range(9))


def test_a_grown_batch_reuses_cached_pairs_and_scores_as_from_scratch():
    old = parts(14) + parts(2, seed=5, defect=True)
    new = parts(5, seed=9) + parts(1, seed=11, defect=True)
    grown = old[:8] + new[:3] + old[8:] + new[3:]  # new images anywhere in the batch
    settings = {**TINY, "references": 5, "patch_sizes": (1, 3)}
    det = create_detector("mutual", settings, "cpu")
    det.score(old)
    again = det.score(grown)
    stats = det.stats
    assert stats.images_computed == 6 and stats.images_reused == 16
    # every (old image, old reference) pair of the grown batch was cached; only pairs with a new image computed
    is_new = [False] * 8 + [True] * 3 + [False] * 8 + [True] * 3
    refs = reference_sets(item_keys([det.cache_digest(x) for x in grown]), 5, 0)
    old_pairs = sum(1 for i, rs in enumerate(refs) for j in rs if not is_new[i] and not is_new[j])
    with_new = sum(1 for i, rs in enumerate(refs) for j in rs if is_new[i] or is_new[j])
    assert stats.pairs_reused == 2 * old_pairs
    assert 0 < stats.pairs_computed <= 2 * with_new
    scratch = create_detector("mutual", settings, "cpu").score(grown)
    np.testing.assert_allclose([again[i].score for i in range(22)], [scratch[i].score for i in range(22)],
                               rtol=1e-5, atol=1e-7)
    for i in range(22):
        np.testing.assert_allclose(again[i].anomaly_map, scratch[i].anomaly_map, rtol=1e-5, atol=1e-6)


def test_changed_feature_settings_empty_the_cache_but_other_settings_reuse_it():
    imgs = parts(8)
    det = create_detector("mutual", {**TINY, "references": 4}, "cpu")
    det.score(imgs)
    det.config = det.config.with_overrides({"references": 3, "interval": 0.5, "patch_sizes": (3,)})
    det.score(imgs)
    assert det.stats.images_computed == 0 and det.stats.pairs_computed == 0
    det.config = det.config.with_overrides({"image_size": 24})
    det.score(imgs)
    assert det.stats.images_computed == 8 and det.stats.pairs_reused == 0


def test_obvious_defect_is_ranked_first():
    imgs = parts(15, seed=4)
    imgs.insert(9, parts(1, seed=8, defect=True)[0])
    res = create_detector("mutual", {**TINY, "references": 6}, "cpu").score(imgs)
    scores = [res[i].score for i in range(16)]
    assert int(np.argmax(scores)) == 9
    amap = res[9].anomaly_map
    c = amap.shape[0] // 2
    assert amap[c - 3:c + 3, c - 3:c + 3].max() == pytest.approx(amap.max())  # the map points at the blob


def test_a_batch_of_one_image_gets_a_clear_message():
    det = create_detector("mutual", TINY, "cpu")
    with pytest.raises(FitError, match=r"at least 2 readable images, got 1 \(one\.png\)"):
        det.score(ImageSource(parts(1), names=["one.png"]))


def test_a_batch_of_identical_images_is_all_normal():
    img = parts(1)[0]
    result = scan_images(create_detector("mutual", TINY, "cpu"), ImageSource([img.copy() for _ in range(6)]))
    assert [r.score for r in result.rows] == [0.0] * 6
    assert result.grouping is not None and result.grouping.sizes == (6, 0)


def test_the_scan_groups_the_batch_and_the_defects_are_suspect():
    imgs = parts(14, seed=1) + parts(3, seed=2, defect=True)
    result = scan_images(create_detector("mutual", {**TINY, "references": 8}, "cpu"), ImageSource(imgs))
    assert result.grouping is not None
    assert [r.columns["group"] for r in result.rows[-3:]] == ["suspect"] * 3
    assert all(r.columns["references"] == 8 and "raw_score" in r.columns for r in result.rows)


def test_cancel_inside_the_mutual_scores_leaves_a_usable_cache():
    imgs = parts(10)
    det = create_detector("mutual", {**TINY, "references": 4}, "cpu")
    token = CancelToken()
    messages, reported = [], []

    def progress(done, total, msg=""):
        if msg.startswith("mutual scores"):
            messages.append(msg)
            token.cancel()

    with pytest.raises(Cancelled):
        det.score(imgs, progress=progress, cancel=token, on_result=lambda i, r: reported.append(i))
    assert len(messages) == 1 and reported == []
    after = det.score(imgs)
    fresh = create_detector("mutual", {**TINY, "references": 4}, "cpu").score(imgs)
    assert [after[i].score for i in range(10)] == pytest.approx([fresh[i].score for i in range(10)], rel=1e-5)


@pytest.mark.parametrize("bad", [{"patch_sizes": (2,)}, {"patch_sizes": (1, 4)}, {"rescore_windows": (0, 1)},
                                 {"feature_dim": 3}, {"stage_weighting": "standardize"},
                                 {"stage_weighting": "concat", "feature_dim": 8}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        create_detector("mutual", {**TINY, **bad}, "cpu")


def test_layer_norm_makes_features_blind_to_an_image_wide_scale_and_shift_of_each_stage():
    """3.2: the paper's LayerNorm standardises each image's layer over channels and positions, so
    a stage map times a constant plus a constant gives the same patch features."""
    det = create_detector("mutual", TINY, "cpu")
    model = det._ensure_model()
    maps = model.maps(torch.rand(2, 3, 32, 32))
    changed = [m * 3.0 + 0.5 for m in maps]
    same = model.degree(changed, 3, layer_norm=True)
    torch.testing.assert_close(same, model.degree(maps, 3, layer_norm=True), rtol=1e-3, atol=5e-4)  # LayerNorm eps
    assert not torch.allclose(model.degree(changed, 3), model.degree(maps, 3), atol=1e-3)


def test_a_session_re_run_over_a_grown_folder_reuses_what_the_detector_computed(tmp_path):
    """A zero-shot session run scores the whole batch again (its scores depend on the batch); the same
    detector (the GUI keeps it while the settings stay) computes only the new images' features and
    the pairs with them, and the run's scores are those of a fresh detector."""
    from core.engine.session_scan import scan_into_session
    from core.session import open_session
    from tests.conftest import write_png

    folder = tmp_path / "batch"
    for i, img in enumerate(parts(12) + parts(1, seed=3, defect=True)):
        write_png(folder / f"p{i:02d}.png", img)
    det = create_detector("mutual", {**TINY, "references": 5}, "cpu")
    with open_session(tmp_path / "s.db", folder=folder) as s:
        scan_into_session(s, det, ImageSource.from_folder(folder))
        for i, img in enumerate(parts(3, seed=7)):
            write_png(folder / f"q{i}.png", img)
        second = scan_into_session(s, det, ImageSource.from_folder(folder))
    assert second.n_new == 16 and det.stats.images_computed == 3 and det.stats.images_reused == 13
    assert 0 < det.stats.pairs_reused < det.stats.pairs_needed
    fresh = scan_images(create_detector("mutual", {**TINY, "references": 5}, "cpu"), ImageSource.from_folder(folder))
    assert [r.path for r in second.result.rows] == [r.path for r in fresh.rows]
    np.testing.assert_allclose([r.score for r in second.result.rows], [r.score for r in fresh.rows], rtol=1e-5)
    assert [r.columns["group"] for r in second.result.rows] == [r.columns["group"] for r in fresh.rows]
