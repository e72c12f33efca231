"""The self-check (issue 24, part 4): synthetic defects, the self-check AUROC on a toy set where
they are trivially separable and on one where they are not, and ``auto`` choosing by it."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.images import ImageSource
from core.data.synthetic import KINDS, SIZES, perlin, synthetic_defects
from core.detectors.base import FitError
from core.detectors.registry import create_detector
from core.engine.selfcheck import run_self_check
from core.engine.workflows import train_detector
from core.results.self_check import SEPARATES, SelfCheck


def gradients(n: int, seed: int = 0, size: int = 48) -> list[np.ndarray]:
    """Aligned good parts where every place looks different: a horizontal ramp, a vertical
    ramp in green, a little noise. A patch moved elsewhere, or made darker, is plain to see."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / (size - 1)
    base = np.stack([x, y, 0.5 * np.ones_like(x)], axis=2).astype(np.float32)
    return [np.clip(base + rng.normal(0, 0.01, base.shape), 0, 1).astype(np.float32) for _ in range(n)]


def noise(n: int, seed: int = 0, size: int = 48) -> list[np.ndarray]:
    """Good parts that are pure uniform noise: another one's content is as good as its own,
    and a 20-40 % shift is within the noise's own spread."""
    rng = np.random.default_rng(seed)
    return [rng.random((size, size, 3)).astype(np.float32) for _ in range(n)]


def test_synthetic_defects_are_seeded_sized_and_masked():
    imgs = gradients(3)
    a, b = synthetic_defects(imgs, seed=1), synthetic_defects(imgs, seed=1)
    assert len(a) == 3 * len(SIZES) * len(KINDS)
    assert [(d.kind, d.size) for d in a[:len(SIZES) * len(KINDS)]] == [(k, s) for s in SIZES for k in KINDS]
    for d, e, src in zip(a, b, [img for img in imgs for _ in range(len(SIZES) * len(KINDS))]):
        assert np.array_equal(d.image, e.image) and np.array_equal(d.mask, e.mask)  # seeded
        assert d.image.shape == src.shape and d.image.dtype == np.float32
        changed = np.abs(d.image - src).max(axis=2) > 1e-6
        assert changed.any() and not (changed & ~d.mask).any()  # changed only inside its mask
        side = d.size * 48
        assert d.mask.sum() <= 2.5 * side * side + 4  # about its size (a cut-paste up to 2:1)
    assert not np.array_equal(synthetic_defects(imgs, seed=2)[0].image, a[0].image)
    with pytest.raises(ValueError, match="at least 2"):
        synthetic_defects(imgs[:1])
    p = perlin((20, 30), 3, np.random.default_rng(0))
    assert p.shape == (20, 30) and np.isfinite(p).all() and np.abs(p).max() <= 1.5


def _trained(images, detector="pixel-gaussian", **sets):
    det = create_detector(detector, {"image_size": 48, "blur_sigma": 1.0, **sets}, device="cpu")
    report = train_detector(det, ImageSource(images), self_check=True, calibration="holdout")
    return det, report


def test_self_check_separates_defects_on_a_toy_set_where_they_are_trivial():
    det, report = _trained(gradients(30))
    check = report.self_check
    assert check is not None and det.meta["self_check"] == check.to_dict()
    assert check.n_good == report.n_calibration == 3 and check.n_synthetic == 6 * 3  # 6 defects each
    assert check.auroc >= 0.9 and check.smallest_separated is not None
    assert set(check.by_size) == {f"{s:g}" for s in SIZES} and set(check.by_kind) == set(KINDS)
    assert "self-check AUROC" in check.describe()


def test_self_check_does_not_claim_what_the_model_cannot_see():
    _, report = _trained(noise(30))
    check = report.self_check
    assert check.auroc < 0.8
    assert check.smallest_separated is None or check.by_size[f"{check.smallest_separated:g}"] >= SEPARATES


def test_self_check_with_kfold_calibration_uses_a_fold_the_model_never_saw():
    det = create_detector("pixel-gaussian", {"image_size": 48, "blur_sigma": 1.0}, device="cpu")
    report = train_detector(det, ImageSource(gradients(20)), calibration="kfold", folds=4, self_check=True)
    assert report.self_check is not None and report.self_check.n_good == 5  # one fold of 20
    assert report.self_check.auroc >= 0.9


def test_self_check_is_off_when_asked_and_needs_two_images():
    det = create_detector("pixel-gaussian", {"image_size": 48}, device="cpu")
    report = train_detector(det, ImageSource(gradients(30)), self_check=False)
    assert report.self_check is None and "self_check" not in det.meta
    assert run_self_check(det, ImageSource(gradients(1)), [0.1]).auroc is None


def test_auto_keeps_the_candidate_with_the_best_self_check(monkeypatch):
    from core.detectors.patchcore import PatchCoreDetector

    tiny = {"backbone": "tiny-random", "image_size": 48, "batch_size": 8, "coreset_ratio": 0.5, "blur_sigma": 1.0}
    options = [{"image_score": "top_mean", "top": 0.9999}, {"image_score": "max"}]
    monkeypatch.setattr(PatchCoreDetector, "auto_candidates", lambda self, images=None: options)
    det = create_detector("patchcore", tiny, device="cpu")
    report = train_detector(det, ImageSource(gradients(24)), auto=True)
    keys = [SelfCheck.from_dict(c["self_check"]).selection_key for c in report.candidates]
    assert keys[0] != keys[1]  # the two rules self-check differently here
    best = max(range(2), key=lambda i: keys[i])
    assert [c["chosen"] for c in report.candidates] == [i == best for i in range(2)]
    assert det.config.image_score == options[best]["image_score"]
    assert det.meta["auto"] == report.candidates and det.threshold is not None

    monkeypatch.setattr(PatchCoreDetector, "auto_candidates", lambda self, images=None: [{}, {}])  # a tie: its own settings
    det = create_detector("patchcore", tiny, device="cpu")
    report = train_detector(det, ImageSource(gradients(24)), auto=True)
    assert [c["chosen"] for c in report.candidates] == [True, False]

    plain = create_detector("pixel-gaussian", {"image_size": 48}, device="cpu")
    with pytest.raises(FitError, match="no settings for auto"):
        train_detector(plain, ImageSource(gradients(24)), auto=True)


def test_patchcore_auto_tries_its_own_settings_then_one_lever_at_a_time():
    det = create_detector("patchcore", {"backbone": "tiny-random", "image_size": 32}, device="cpu")
    assert det.auto_candidates() == [{}, {"augment": "rot4"}, {"distance": "cosine"}, {"resize": "keep"}]
    moved = create_detector("patchcore", {"backbone": "tiny-random", "augment": "rot8", "distance": "cosine",
                                          "resize": "pad"}, device="cpu")
    assert moved.auto_candidates() == [{}, {"distance": "l2"}]
    tiny = {"backbone": "tiny-random", "image_size": 32, "batch_size": 8, "blur_sigma": 1.0}
    det = create_detector("patchcore", tiny, device="cpu")
    report = train_detector(det, ImageSource(gradients(12)), auto=True)
    assert [c["settings"] for c in report.candidates] == [{}, {"augment": "rot4"}, {"distance": "cosine"},
                                                          {"resize": "keep"}]
    assert sum(c["chosen"] for c in report.candidates) == 1 and det.threshold is not None


def test_auto_calibration_follows_the_number_of_good_images():
    from core.engine.workflows import auto_calibration

    # 40 good images hold out 4: too few for 1 % -> all 40 out-of-fold, still < 100 -> a fitted tail
    assert auto_calibration(40, 0.01) == ("kfold", "tail")
    # 2,000 hold out 200 >= 100: held out, the empirical quantile
    assert auto_calibration(2000, 0.01) == ("holdout", "empirical")
    # 500 hold out 50 < 100 -> k-fold over 500 >= 100 -> empirical
    assert auto_calibration(500, 0.01) == ("kfold", "empirical")
    assert auto_calibration(40, 0.25) == ("holdout", "empirical")  # 4 held out support 1 / 4
    assert auto_calibration(40, 0.01, "holdout", "auto") == ("holdout", "tail")
    assert auto_calibration(40, 0.01, "kfold", "empirical") == ("kfold", "empirical")  # explicit choices pass


def test_self_check_scores_its_defects_a_batch_at_a_time_with_the_same_result():
    """Memory: 20 held-out images of 900 px make 120 synthetic defects, 1.2 GB if held at once;
    the self-check makes and scores them a batch at a time (same defects, same AUROC)."""
    from core.data.synthetic import synthetic_defect, synthetic_defects
    from core.engine.selfcheck import run_self_check

    base = gradients(5)
    every = synthetic_defects(base, seed=3)
    assert all(np.array_equal(synthetic_defect(base, k, seed=3).image, d.image) for k, d in enumerate(every))
    det, _ = _trained(gradients(30), batch_size=4)
    sizes = []
    real_score = det.score

    def score(images, *a, **k):
        sizes.append(len(images))
        return real_score(images, *a, **k)

    det.score = score
    good_scores = [r.score for r in real_score(ImageSource(base)).values()]
    check = run_self_check(det, ImageSource(base), good_scores, seed=3)
    assert max(sizes) <= 4 and sum(sizes) == len(every) == check.n_synthetic
    allatonce = [r.score for r in real_score(ImageSource([d.image for d in every])).values()]
    from core.metrics.auroc import auroc_from_split

    assert check.auroc == pytest.approx(auroc_from_split(np.array(allatonce), np.array(good_scores)))


def _parts_on_ground(n: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    """A textured part (a third of the frame) on a black ground, at a few places."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        y, x = 8 + (i % 3) * 6, 10 + (i % 2) * 8
        img[y:y + 30, x:x + 36] = 0.4 + 0.3 * rng.random((30, 36, 3))
        out.append(img)
    return out


def test_synthetic_defects_on_a_part_on_a_plain_ground_land_on_the_part():
    from core.data.ground import part_region

    imgs = _parts_on_ground(4)
    defects = synthetic_defects(imgs, seed=5)
    per_image = len(SIZES) * len(KINDS)
    for k, d in enumerate(defects):
        part = part_region(imgs[k // per_image])
        assert part is not None
        ys, xs = np.nonzero(d.mask)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        assert part[cy, cx], (k, d.kind, d.size)  # centred on the part, not the ground
    # the regions found once (as the self-check does) give the same defects, a grey donor among them
    mixed = imgs[:3] + [imgs[3].max(axis=2, keepdims=True)]
    from core.data.synthetic import part_regions, synthetic_defect
    regions = part_regions(mixed)
    for k in range(len(mixed) * per_image):
        a, b = synthetic_defect(mixed, k, 5), synthetic_defect(mixed, k, 5, regions=regions)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    # an image that is all texture has no part: its defects are drawn as before, over the whole frame
    assert part_region(gradients(1)[0]) is None and part_region(noise(1)[0]) is None
