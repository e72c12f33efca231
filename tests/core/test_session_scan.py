"""Scanning into a session: incremental re-runs score only new and changed images."""

from __future__ import annotations

import numpy as np

from core.data.images import ImageSource
from core.detectors.base import Detector
from core.detectors.registry import create_detector
from core.engine.session_scan import model_fingerprint, scan_into_session, score_settings
from core.engine.workflows import scan_images, train_detector
from core.results import ScoreResult
from core.session import open_session
from tests.conftest import make_part, write_png

SMALL = {"image_size": 16, "batch_size": 4, "blur_sigma": 1.0}


def _trained(tiny_parts, **extra):
    det = create_detector("pixel-gaussian", {**SMALL, **extra}, device="cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    return det


def _counting(det):
    """Wrap ``det.score`` to record how many images each call scored."""
    calls: list[int] = []
    original = det.score

    def score(images, *a, **k):
        calls.append(len(images))
        return original(images, *a, **k)

    det.score = score
    return calls


def test_incremental_rerun_scores_only_new_and_changed_images(tiny_parts, tmp_path):
    det = _trained(tiny_parts)
    calls = _counting(det)
    batch = tiny_parts / "batch"
    with open_session(tmp_path / "s.db", folder=batch) as s:
        first = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert (first.n_new, first.n_reused) == (8, 0) and calls == [8]
        rng = np.random.default_rng(5)
        write_png(batch / "ok0.png", make_part(rng, defect=True))  # changed
        write_png(batch / "new1.png", make_part(rng))  # new
        write_png(batch / "new2.png", make_part(rng, defect=True))  # new
        second = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert (second.n_new, second.n_reused) == (3, 7) and calls == [8, 3]
        assert second.describe() == "3 new, 7 reused"
        # the run still covers every image, and a reused score is the score a full scan gives
        full = scan_images(det, ImageSource.from_folder(batch))
        assert [r.path for r in second.result.rows] == [r.path for r in full.rows]
        for a, b in zip(second.result.rows, full.rows):
            assert a.score == b.score and a.flagged == b.flagged
            assert a.anomaly_map.tobytes() == b.anomaly_map.tobytes()
        third = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert (third.n_new, third.n_reused) == (0, 10) and calls == [8, 3, 8 + 2]  # full scan above counted too
        stored = s.load_run(third.run_id, maps=True, decisions=False)
        assert [r.score for r in stored.rows] == [r.score for r in full.rows]
        assert all(r.anomaly_map is not None for r in stored.rows)
        runs = s.runs()
        assert [(r.n_new, r.n_reused) for r in runs] == [(8, 0), (3, 7), (0, 10)]
        assert len({r.run_key for r in runs}) == 1
        # reuse copies no maps: one blob per scored image content
        assert s.conn.execute("SELECT count(*) FROM maps").fetchone()[0] == 11


def test_other_settings_or_model_make_a_new_run_that_scores_everything(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    det = _trained(tiny_parts)
    with open_session(tmp_path / "s.db", folder=batch) as s:
        scan_into_session(s, det, ImageSource.from_folder(batch))
        det.config = det.config.with_overrides({"batch_size": 2})  # score-neutral: still reusable
        assert scan_into_session(s, det, ImageSource.from_folder(batch)).n_reused == 8
        det.config = det.config.with_overrides({"blur_sigma": 2.0})
        assert scan_into_session(s, det, ImageSource.from_folder(batch)).n_new == 8
        other = create_detector("pixel-gaussian", {**SMALL, "blur_sigma": 2.0}, device="cpu")
        train_detector(other, ImageSource.from_folder(tiny_parts / "good"), max_train=8)  # other weights
        assert model_fingerprint(other) != model_fingerprint(det)
        assert scan_into_session(s, other, ImageSource.from_folder(batch)).n_new == 8
        assert len(s.runs()) == 4


def test_a_map_only_setting_keeps_scores_but_never_reuses_maps_made_under_another_value(tiny_parts, tmp_path):
    """patchcore's ``map_sigma`` moves no score (the threshold still holds), but the maps stored
    with a run were made under the old blur: a session re-scores rather than show two blurs, and a
    resumed scan's fingerprint differs. At its baseline value the key is the one it always was."""
    from core.engine.stream_scan import run_fingerprint

    batch = tiny_parts / "batch"
    det = create_detector("patchcore", {"backbone": "tiny-random", "image_size": 32, "batch_size": 4,
                                        "coreset_ratio": 0.5, "blur_sigma": 2.0}, device="cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    before = run_fingerprint(det, det.threshold, True)
    assert "map_sigma" not in score_settings(det)  # at its baseline: the key of a run made before the field
    with open_session(tmp_path / "s.db", folder=batch) as s:
        first = scan_into_session(s, det, ImageSource.from_folder(batch))
        det.config = det.config.with_overrides({"map_sigma": 0.5})
        assert det.threshold_mismatch() == []  # neutral: the threshold holds
        assert run_fingerprint(det, det.threshold, True) != before
        second = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert (second.n_new, second.n_reused) == (8, 0)  # new maps, not the stored ones
        assert [r.score for r in second.result.rows] == [r.score for r in first.result.rows]
        assert any(a.anomaly_map.tobytes() != b.anomaly_map.tobytes()
                   for a, b in zip(second.result.rows, first.result.rows))
        assert scan_into_session(s, det, ImageSource.from_folder(batch)).n_reused == 8  # same blur: reused
        det.config = det.config.with_overrides({"map_sigma": 0.0})
        assert run_fingerprint(det, det.threshold, True) == before
        assert scan_into_session(s, det, ImageSource.from_folder(batch)).n_reused == 8  # the first run's rows


def test_fingerprint_is_the_same_for_a_saved_and_loaded_model(tiny_parts, tmp_path):
    from core.detectors.registry import load_model

    det = _trained(tiny_parts)
    det.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model", device="cpu")
    assert model_fingerprint(loaded) == model_fingerprint(det)


def test_unreadable_files_are_skipped_and_recorded(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    (batch / "broken.png").write_text("not an image")
    det = _trained(tiny_parts)
    with open_session(tmp_path / "s.db", folder=batch) as s:
        out = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert len(out.result.rows) == 8 and [sk.path.name for sk in out.result.skipped] == ["broken.png"]
        assert [sk.path for sk in s.run().skipped] == [batch / "broken.png"]


class _BatchMean(Detector):
    """A zero-shot test detector whose scores depend on the batch (like a model trained on it)."""

    name = "batch-mean-test"
    title = summary = "test"
    zero_shot = True

    def score(self, images, progress=None, cancel=None, on_result=None, skipped=None):
        self._mean = float(np.mean([np.mean(images[i]) for i in range(len(images))]))
        return super().score(images, progress, cancel, on_result, skipped)

    def _score_batch(self, images):
        return [ScoreResult(abs(float(np.mean(im)) - self._mean)) for im in images]

    def _fit(self, images, progress, cancel, skipped):  # pragma: no cover - zero-shot
        pass

    def _state(self):
        return {}

    def _restore(self, tensors, meta):  # pragma: no cover
        pass


def test_zero_shot_runs_score_every_image_and_keep_hand_moves(tiny_parts, tmp_path):
    batch = tiny_parts / "batch"
    det = _BatchMean(device="cpu")
    calls = _counting(det)
    with open_session(tmp_path / "s.db", folder=batch) as s:
        first = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert first.result.grouping is not None and calls == [8]
        normal = next(r.path for r in first.result.rows if r.columns["group"] == "normal")
        s.move_to_group(normal, "suspect")
        write_png(batch / "late.png", make_part(np.random.default_rng(3)))
        second = scan_into_session(s, det, ImageSource.from_folder(batch))
        assert (second.n_new, second.n_reused) == (9, 0) and calls == [8, 9]
        moved = next(r for r in second.result.rows if r.path == normal)
        assert moved.columns["group"] == "suspect" and moved.flagged
        assert s.load_run(second.run_id).rows[[r.path for r in second.result.rows].index(normal)].flagged
        from core.session.report import build_report

        html = build_report(s)  # a grouped run: no threshold line, the grouping in the provenance
        assert "threshold (run)</th><td class='mono'>none (zero-shot: grouped)" in html
        assert "grouping</th><td class='mono'>kmeans: " in html and html.count("<svg") == 1


def test_an_interrupted_session_scan_keeps_what_was_scored_and_stores_no_run(tiny_parts, tmp_path):
    """keep_partial (the CLI's SIGINT path): the rows scored before Cancel come back marked
    interrupted, and the session holds no incomplete run; without it Cancelled is raised."""
    import pytest

    from core.runtime.cancel import Cancelled, CancelToken

    det = _trained(tiny_parts, batch_size=2)
    batch = tiny_parts / "batch"

    def cancelling():
        token = CancelToken()

        def progress(done, total, msg=""):
            if msg.startswith("scored 4 of"):
                token.cancel()
        return token, progress

    with open_session(tmp_path / "s.db", folder=batch) as s:
        token, progress = cancelling()
        out = scan_into_session(s, det, ImageSource.from_folder(batch), progress=progress, cancel=token,
                                keep_partial=True)
        assert out.result.interrupted and out.run_id is None and 0 < len(out.result.rows) < 8
        assert out.describe().endswith("interrupted: no run stored") and s.runs() == []
        token, progress = cancelling()
        with pytest.raises(Cancelled):
            scan_into_session(s, det, ImageSource.from_folder(batch), progress=progress, cancel=token)
        assert s.runs() == []
        assert scan_into_session(s, det, ImageSource.from_folder(batch)).n_new == 8  # nothing half-stored to reuse


def test_rows_are_reported_as_known_and_side_images_kept_on_request(tiny_parts, tmp_path):
    import dataclasses

    det = _trained(tiny_parts)
    original = det.score

    def score(images, progress=None, cancel=None, on_result=None, **k):  # a detector with a side image
        def with_extra(j, res):
            on_result(j, dataclasses.replace(res, extras={"reconstruction": np.zeros((4, 4), np.float32)}))
        return original(images, progress, cancel, on_result=with_extra, **k)

    det.score = score
    batch = tiny_parts / "batch"
    with open_session(tmp_path / "s.db", folder=batch) as s:
        seen: list[int] = []
        first = scan_into_session(s, det, ImageSource.from_folder(batch), on_row=lambda i, row: seen.append(i),
                                  keep_extras=True)
        assert sorted(seen) == list(range(8))
        assert all("reconstruction" in r.extras for r in first.result.rows)
        write_png(batch / "new1.png", make_part(np.random.default_rng(3)))
        seen.clear()
        second = scan_into_session(s, det, ImageSource.from_folder(batch), on_row=lambda i, row: seen.append(i))
        new = [i for i, r in enumerate(second.result.rows) if r.path.name == "new1.png"]
        assert sorted(seen) == list(range(9)) and seen[-1] == new[0]  # the reused rows first, then the scored one
        assert not any(r.extras for r in second.result.rows)  # not asked for
