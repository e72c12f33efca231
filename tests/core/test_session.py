"""The session store (core.session): schema, runs read back bit-identically, decisions, locking,
and durability against SIGKILL and a second process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.data.images import Skipped
from core.results import ScanResult, ScanRow, regroup
from core.results.threshold import calibrate
from core.session import (
    SchemaError,
    SessionError,
    SessionLockedError,
    SessionReadOnlyError,
    default_session_path,
    disagrees,
    open_session,
)
from core.session import schema as schema_mod
from core.session.maps import decode_map, encode_map
from core.session.store import ReviewBand
from tests.conftest import ROOT

TABLES = {"meta", "images", "runs", "results", "maps", "verdicts", "notes", "group_moves", "threshold_changes",
          "good_set", "ui_state"}


def _files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        p.write_bytes(rng.bytes(64))  # the store hashes bytes; it never decodes them
        out.append(p)
    return out


def _result(paths: list[Path], seed: int = 0, grouped: bool = False) -> ScanResult:
    rng = np.random.default_rng(seed)
    rows = []
    for i, p in enumerate(paths):
        m = (rng.random((12 + i % 3, 9)) * 7).astype(np.float16)
        rows.append(ScanRow(p, float(rng.random() * 10), bool(i % 2), (48 + i, 36), m,
                            {"mean_z": float(rng.random()), "patch": int(i), "label": f"x{i}"}))
    thr = calibrate(rng.random(20) * 10, 0.05)
    thr.settings = {"image_size": 16}
    res = ScanResult("pixel-gaussian", rows, [Skipped(paths[0].parent / "bad.png", "not an image")], thr, 1.25)
    for r in res.rows:
        r.flagged = thr.flags(r.score)
    if grouped:
        regroup(res, "kmeans")
    return res


def _store(s, res: ScanResult, key: str = "k") -> int:
    recs = s.sync_images([r.path for r in res.rows])
    return s.record_run(res, recs, fingerprint="f" * 64, settings={"image_size": 16}, run_key=key,
                        started_at="2026-01-01T00:00:00+00:00")


# ----------------------------------------------------------------------------- schema
def test_new_session_has_current_schema_and_wal(tmp_path):
    with open_session(tmp_path / "s.db", folder=tmp_path) as s:
        names = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert TABLES <= names
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == schema_mod.current_version()
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = s.meta()
        assert meta["folder"] == str(tmp_path) and meta["created_by"] == s.user and "created" in meta


def test_migration_from_version_1_keeps_data(tmp_path, monkeypatch):
    paths = _files(tmp_path / "imgs", 3)
    current = schema_mod.MIGRATIONS
    monkeypatch.setattr(schema_mod, "MIGRATIONS", current[:1])  # a session written by the first release
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        _store(s, _result(paths))
        s.set_verdict(paths[1], "ng")
    monkeypatch.setattr(schema_mod, "MIGRATIONS", current)
    with open_session(tmp_path / "s.db") as s:  # version 2: the models the session keeps
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == schema_mod.current_version() == 2
        assert s.models() == [] and s.good_folder() is None
        assert s.verdicts()[paths[1]].value == "ng" and len(s.load_run().rows) == 3

    monkeypatch.setattr(schema_mod, "MIGRATIONS", current[:1])
    with open_session(tmp_path / "v1.db", folder=tmp_path / "imgs") as s:
        _store(s, _result(paths))
    monkeypatch.setattr(schema_mod, "MIGRATIONS", current)
    with open_session(tmp_path / "v1.db", mode="ro") as s:  # report / export read an old session as it is
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert s.models() == [] and s.model(s.run().fingerprint) is None and len(s.load_run().rows) == 3

    def to_v3(conn):
        conn.execute("ALTER TABLE images ADD COLUMN camera TEXT NOT NULL DEFAULT 'cam-1'")

    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*current, to_v3])
    with open_session(tmp_path / "s.db") as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert {r[0] for r in s.conn.execute("SELECT camera FROM images")} == {"cam-1"}
        assert s.verdicts()[paths[1]].value == "ng" and len(s.load_run().rows) == 3


def test_a_failed_migration_leaves_the_previous_version(tmp_path, monkeypatch):
    open_session(tmp_path / "s.db").close()
    before = schema_mod.current_version()

    def broken(conn):
        conn.execute("ALTER TABLE images ADD COLUMN camera TEXT")
        raise RuntimeError("half-way")

    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="half-way"):
        open_session(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == before
    assert "camera" not in {r[1] for r in conn.execute("PRAGMA table_info(images)")}
    conn.close()


def test_newer_and_foreign_files_are_refused(tmp_path):
    open_session(tmp_path / "new.db").close()
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="newer than this program"):
        open_session(tmp_path / "new.db")
    with pytest.raises(SchemaError, match="newer than this program"):
        open_session(tmp_path / "new.db", mode="ro")
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="not an Anomaly Inspector session"):
        open_session(tmp_path / "other.db")
    (tmp_path / "text.db").write_text("hello, not a database" * 100)
    with pytest.raises(SessionError, match="cannot open session"):
        open_session(tmp_path / "text.db")
    with pytest.raises(SessionError, match="not found"):
        open_session(tmp_path / "missing.db", mode="ro")


def test_default_session_lives_in_the_data_folder_keyed_by_path(tmp_path):
    a, b = tmp_path / "line1" / "batch", tmp_path / "line2" / "batch"
    pa, pb = default_session_path(a), default_session_path(b)
    assert pa != pb and pa.parent == pb.parent
    assert os.environ["ANOMALY_INSPECTOR_HOME"] in str(pa) and not str(pa).startswith(str(a))
    assert default_session_path(a) == pa and pa.name.startswith("batch-")


# ----------------------------------------------------------------------------- runs
def test_map_codec_is_lossless_and_smaller_on_smooth_maps():
    yy, xx = np.mgrid[0:64, 0:80]
    m = (np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 200.0) * 5).astype(np.float16)
    codec, h, w, blob = encode_map(m)
    back = decode_map(codec, h, w, blob)
    assert back.dtype == np.float16 and back.tobytes() == m.tobytes()
    assert len(blob) < m.nbytes / 2
    with pytest.raises(ValueError):
        decode_map("png", h, w, blob)


def test_png_codec_is_compact_and_within_half_a_step_of_the_range(tmp_path):
    yy, xx = np.mgrid[0:64, 0:80]
    m = (np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 200.0) * 5 + 0.3).astype(np.float16)
    codec, h, w, blob = encode_map(m, "u8-png")
    back = decode_map(codec, h, w, blob)
    step = (float(m.max()) - float(m.min())) / 255.0
    assert np.abs(back.astype(np.float32) - m.astype(np.float32)).max() <= step / 2 + 0.01
    assert len(blob) < len(encode_map(m)[3])
    paths = _files(tmp_path / "imgs", 2)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs", map_codec="u8-png") as s:
        _store(s, _result(paths))
    with open_session(tmp_path / "s.db") as s:
        assert s.map_codec == "u8-png" and s.load_map(paths[0]).shape == (12, 9)
    with pytest.raises(ValueError, match="map_codec"):
        open_session(tmp_path / "t.db", map_codec="jpeg")


def test_a_run_reads_back_bit_identically(tmp_path):
    paths = _files(tmp_path / "imgs", 6)
    res = _result(paths)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        run_id = _store(s, res)
    with open_session(tmp_path / "s.db", mode="ro") as s:
        back = s.load_run(run_id, maps=True, decisions=False)
        info = s.run()
        assert info.id == run_id and info.n_images == 6 and info.n_new == 6 and info.n_reused == 0
        assert info.fingerprint == "f" * 64 and info.settings == {"image_size": 16} and info.user == s.user
        lone = s.load_map(paths[2])
    assert [r.path for r in back.rows] == paths
    for a, b in zip(res.rows, back.rows):
        assert a.score == b.score and a.flagged == b.flagged and a.image_shape == b.image_shape
        assert a.columns == b.columns
        assert b.anomaly_map.dtype == np.float16 and a.anomaly_map.tobytes() == b.anomaly_map.tobytes()
    assert lone.tobytes() == res.rows[2].anomaly_map.tobytes()
    assert back.threshold.to_dict() == res.threshold.to_dict()
    assert back.skipped == res.skipped and back.seconds == res.seconds and back.detector == res.detector


def test_session_moved_to_another_folder_resolves_paths_there(tmp_path):
    paths = _files(tmp_path / "server", 3)
    with open_session(tmp_path / "s.db", folder=tmp_path / "server") as s:
        _store(s, _result(paths))
    with open_session(tmp_path / "s.db", folder=tmp_path / "desk", mode="ro") as s:
        assert [r.path for r in s.load_run().rows] == [tmp_path / "desk" / p.name for p in paths]


def test_sync_images_rehashes_only_changed_files(tmp_path):
    paths = _files(tmp_path / "imgs", 3)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        first = s.sync_images(paths)
        assert [r.state for r in first] == ["new"] * 3
        paths[1].write_bytes(b"other content")
        again = s.sync_images(paths)
        assert [r.state for r in again] == ["same", "changed", "same"]
        assert again[0].sha256 == first[0].sha256 and again[1].sha256 != first[1].sha256
        assert [r.id for r in again] == [r.id for r in first]


def test_reusable_finds_scores_by_content_under_the_same_key(tmp_path):
    paths = _files(tmp_path / "imgs", 4)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        res = _result(paths)
        run_id = _store(s, res, key="A")
        recs = s.sync_images(paths)
        found = s.reusable("A", [r.sha256 for r in recs])
        assert set(found) == {r.sha256 for r in recs}
        assert found[recs[2].sha256].score == res.rows[2].score and found[recs[2].sha256].run_id == run_id
        assert s.reusable("B", [r.sha256 for r in recs]) == {}


def test_an_interrupted_run_is_neither_shown_nor_reused_nor_kept(tmp_path, monkeypatch):
    from core.session import store

    paths = _files(tmp_path / "imgs", 7)
    s = open_session(tmp_path / "s.db", folder=tmp_path / "imgs")
    first = _store(s, _result(paths), key="A")
    monkeypatch.setattr(store, "RECORD_CHUNK", 2)
    calls = []

    def failing(m, codec):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # stopped in the middle of writing the run
        return encode_map(m, codec)

    monkeypatch.setattr(store, "encode_map", failing)
    with pytest.raises(KeyboardInterrupt):
        _store(s, _result(paths, seed=1), key="B")
    assert [r.id for r in s.runs()] == [first] and s.run().id == first
    assert s.conn.execute("SELECT count(*) FROM results WHERE run_id != ?", (first,)).fetchone()[0] == 0
    # a process killed while writing leaves an unfinished run: hidden, and removed on the next open
    s.conn.execute("INSERT INTO runs (detector, fingerprint, settings, run_key, app_version, user, started_at, "
                   "finished_at, seconds, n_new, n_reused, skipped) VALUES ('x', 'f', '{}', 'A', '0', 'u', 't', '', 0, "
                   "0, 0, '[]')")
    ghost = s.conn.execute("SELECT max(id) FROM runs").fetchone()[0]
    s.conn.execute("INSERT INTO results SELECT ?, image_id, position, 99.0, flagged, group_name, columns, height, width, "
                   "image_sha256, ? FROM results WHERE run_id = ?", (ghost, ghost, first))
    assert s.run().id == first and all(v.score != 99.0 for v in s.reusable("A", [r[1] for r in s.images()]).values())
    s.close()
    with open_session(tmp_path / "s.db", mode="ro") as ro:
        assert [r.id for r in ro.runs()] == [first]
    with open_session(tmp_path / "s.db") as again:
        assert again.conn.execute("SELECT count(*) FROM runs WHERE id = ?", (ghost,)).fetchone()[0] == 0
        assert again.conn.execute("SELECT count(*) FROM results WHERE run_id = ?", (ghost,)).fetchone()[0] == 0


def test_a_decision_from_another_thread_commits_while_a_run_is_written(tmp_path, monkeypatch):
    import threading

    from core.session import store

    paths = _files(tmp_path / "imgs", 6)
    s = open_session(tmp_path / "s.db", folder=tmp_path / "imgs")
    _store(s, _result(paths))
    monkeypatch.setattr(store, "RECORD_CHUNK", 2)
    encoding, go_on = threading.Event(), threading.Event()

    def slow(m, codec):
        encoding.set()
        assert go_on.wait(30)
        return encode_map(m, codec)

    monkeypatch.setattr(store, "encode_map", slow)
    worker = threading.Thread(target=_store, args=(s, _result(paths, seed=2), "B"))
    worker.start()
    assert encoding.wait(30)  # the worker is in the middle of recording the run
    s.set_verdict(paths[0], "ng")  # the UI thread decides meanwhile: committed at once
    other = open_session(tmp_path / "s.db", mode="ro")
    assert other.verdicts()[paths[0]].value == "ng" and len(other.runs()) == 1
    go_on.set()
    worker.join(30)
    assert len(other.runs()) == 2
    other.close()
    s.close()


# ----------------------------------------------------------------------------- decisions
def test_decisions_carry_user_and_time_and_keep_history(tmp_path):
    paths = _files(tmp_path / "imgs", 4)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        run_id = _store(s, _result(paths))
        s.set_verdict(paths[0], "ok")
        s.set_verdict(paths[0], "ng")
        s.set_verdict(paths[1], "unsure")
        s.set_verdict(paths[1], None)
        s.set_note(paths[0], "scratch at the neck")
        with pytest.raises(ValueError, match="verdict"):
            s.set_verdict(paths[2], "bad")
        with pytest.raises(SessionError, match="not an image of this session"):
            s.set_verdict(tmp_path / "elsewhere.png", "ok")
        v = s.verdicts()
        assert set(v) == {paths[0]} and v[paths[0]].value == "ng" and v[paths[0]].user == s.user
        assert v[paths[0]].at.endswith("+00:00")
        assert s.notes()[paths[0]].value == "scratch at the neck"
        assert s.conn.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 4  # nothing overwritten
        s.set_threshold(run_id, 4.5)
        s.set_review_band(run_id, 3.0, 6.0)
        assert s.threshold_value(run_id) == 4.5 and s.review_band(run_id) == ReviewBand(3.0, 6.0)
        s.set_threshold(run_id, 5.0)
        assert s.review_band(run_id) == ReviewBand(3.0, 6.0)
        assert [h["reason"] for h in s.threshold_history(run_id)] == ["set by hand", "review band", "set by hand"]
        with pytest.raises(ValueError, match="above"):
            s.set_review_band(run_id, 6.0, 3.0)
        s.mark_normal(paths[3])
        s.mark_normal(paths[2])
        s.mark_normal(paths[2], False)
        assert s.good_set() == [paths[3]]
        s.set_ui_state("sort", {"column": "score", "descending": True})
        s.set_ui_state("selection", str(paths[1]))
    with open_session(tmp_path / "s.db") as s:  # restore on reopen
        assert s.ui_state() == {"sort": {"column": "score", "descending": True}, "selection": str(paths[1])}
        assert s.threshold_value(run_id) == 5.0
        back = s.load_run()
        assert [r.flagged for r in back.rows] == [r.score > 5.0 for r in back.rows]
        assert back.threshold.value == 5.0


def test_this_one_is_normal_recalibrates_the_threshold(tmp_path):
    paths = _files(tmp_path / "imgs", 5)
    res = _result(paths)
    res.threshold = calibrate([1.0, 2.0, 3.0, 4.0], 0.0)  # threshold 4.0
    for r, sc in zip(res.rows, [1.0, 3.5, 4.5, 6.0, 9.0]):
        r.score = sc
    res.apply_threshold(res.threshold)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        run_id = _store(s, res)
        assert [r.flagged for r in s.load_run().rows] == [False, False, True, True, True]
        s.mark_normal(paths[2])  # 4.5 was a false alarm
        thr = s.recalibrate_with_good_set(run_id)
        assert thr.value == 4.5 and thr.n_calibration == 5
        assert s.threshold_value(run_id) == 4.5
        assert "1 images marked normal" in s.threshold_history(run_id)[-1]["reason"]
        assert [r.flagged for r in s.load_run().rows] == [False, False, False, True, True]
        other = _result(paths)
        other.threshold = None
        other_id = _store(s, other)
        with pytest.raises(SessionError, match="no calibrated threshold"):
            s.recalibrate_with_good_set(other_id)


def test_review_band_counters_queue_and_disagreement(tmp_path):
    paths = _files(tmp_path / "imgs", 6)
    res = _result(paths)
    scores = [1.0, 2.0, 4.0, 5.5, 8.0, 9.0]
    for r, sc in zip(res.rows, scores):
        r.score = sc
    res.threshold.value = 7.0
    res.apply_threshold(res.threshold)  # flagged: 8.0 and 9.0
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        run_id = _store(s, res)
        s.set_review_band(run_id, 3.0, 7.0)  # review zone: 4.0 and 5.5
        assert s.review_queue(run_id) == [paths[5], paths[4], paths[3], paths[2]]
        st = s.review_status(run_id)
        assert (st.reviewed, st.to_review, st.disagree, st.n_flagged) == (0, 4, 0, 2)
        s.set_verdict(paths[5], "ng")
        s.set_verdict(paths[4], "ok")  # flagged, but the inspector says OK: disagrees
        s.set_verdict(paths[2], "ng")  # not flagged, but NG: disagrees
        s.set_verdict(paths[3], "unsure")
        st = s.review_status(run_id)
        assert (st.reviewed, st.to_review, st.disagree) == (4, 0, 2)
        assert st.describe() == "reviewed 4 / 4, 2 disagree" and st.verdicts == {"ok": 1, "ng": 2, "unsure": 1}
        assert s.review_queue(run_id) == []
    assert disagrees("ok", True) and disagrees("ng", False) and not disagrees("unsure", True)
    assert not disagrees("ng", None) and not disagrees(None, True)


def test_hand_moves_survive_regroup_and_reopen(tmp_path):
    paths = _files(tmp_path / "imgs", 8)
    res = _result(paths, grouped=True)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        run_id = _store(s, res)
        target = next(i for i, r in enumerate(res.rows) if r.columns["group"] == "normal")
        s.move_to_group(paths[target], "suspect")
    with open_session(tmp_path / "s.db") as s:
        back = s.load_run()
        assert back.rows[target].columns["group"] == "suspect" and back.rows[target].flagged
        assert target in back.grouping.moved
        regroup(back, "kmeans")  # the algorithm puts it back ...
        assert back.rows[target].columns["group"] == "normal"
        s.apply_decisions(back, run_id)  # ... and the inspector's move is laid over it again
        assert back.rows[target].columns["group"] == "suspect" and back.rows[target].flagged
        s.move_to_group(paths[target], None)
        assert s.load_run().rows[target].columns["group"] == "normal"
        with pytest.raises(ValueError, match="group must be"):
            s.move_to_group(paths[0], "odd")


# ----------------------------------------------------------------------------- locking, processes
def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))


def test_second_writer_is_refused_with_the_holder_named_and_may_read(tmp_path):
    paths = _files(tmp_path / "imgs", 3)
    s = open_session(tmp_path / "s.db", folder=tmp_path / "imgs")
    _store(s, _result(paths))
    s.set_verdict(paths[0], "ok")
    with pytest.raises(SessionLockedError, match=f"open for writing by {s.user} on .* \\(process {os.getpid()}"):
        open_session(tmp_path / "s.db")
    ro = open_session(tmp_path / "s.db", mode="auto")
    assert ro.read_only and "open for writing by" in ro.read_only_reason
    assert ro.verdicts()[paths[0]].value == "ok"
    with pytest.raises(SessionReadOnlyError, match="read-only"):
        ro.set_verdict(paths[1], "ng")
    ro.close()
    s.close()
    with open_session(tmp_path / "s.db") as again:  # released on close
        assert not again.read_only


CHILD_REVIEW = """
import sys
from pathlib import Path
from core.session import open_session
s = open_session(sys.argv[1])
paths = [Path(p) for p in sys.argv[2:]]
for i, p in enumerate(paths):
    s.set_verdict(p, "ng" if i % 3 == 0 else "ok")
    s.set_note(p, f"note {i}")
    print(i, flush=True)
import time
time.sleep(120)
"""


def test_sigkill_mid_review_keeps_every_committed_verdict(tmp_path):
    paths = _files(tmp_path / "imgs", 60)
    with open_session(tmp_path / "s.db", folder=tmp_path / "imgs") as s:
        _store(s, _result(paths))
    child = _child(CHILD_REVIEW, str(tmp_path / "s.db"), *map(str, paths))
    seen = []
    try:
        for line in child.stdout:
            seen.append(int(line))
            if len(seen) == 25:
                child.send_signal(signal.SIGKILL)  # in the middle of the review
                break
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert seen == list(range(25))
    with open_session(tmp_path / "s.db") as s:  # the writer lock died with the process
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        verdicts, notes = s.verdicts(), s.notes()
        for i in seen:
            assert verdicts[paths[i]].value == ("ng" if i % 3 == 0 else "ok")
            assert notes[paths[i]].value == f"note {i}"
        assert len(verdicts) >= 25 and all(paths.index(p) < 26 for p in verdicts)


CHILD_SECOND = """
import sys, json
from pathlib import Path
from core.session import SessionLockedError, SessionReadOnlyError, open_session
try:
    open_session(sys.argv[1])
    print("opened for writing")
except SessionLockedError as exc:
    print("locked:", exc, flush=True)
s = open_session(sys.argv[1], mode="auto")
counts = []
for _ in range(40):
    counts.append(len(s.verdicts()))
    assert s.load_run().rows, "empty run"
try:
    s.set_verdict(Path(sys.argv[2]), "ok")
except SessionReadOnlyError as exc:
    print("read-only:", exc, flush=True)
print(json.dumps(counts), flush=True)
"""


def test_two_processes_on_one_session_do_not_corrupt_it(tmp_path):
    paths = _files(tmp_path / "imgs", 30)
    s = open_session(tmp_path / "s.db", folder=tmp_path / "imgs")
    _store(s, _result(paths))
    child = _child(CHILD_SECOND, str(tmp_path / "s.db"), str(paths[0]))
    for i, p in enumerate(paths):  # the writer goes on while the second process reads
        s.set_verdict(p, "ng" if i % 2 else "ok")
    out, err = child.communicate(timeout=120)
    s.close()
    assert child.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("locked: session") and "open for writing by" in lines[0]
    assert lines[1].startswith("read-only: session")
    import json

    counts = json.loads(lines[2])
    assert counts == sorted(counts) and counts[-1] <= 30  # never went backwards
    with open_session(tmp_path / "s.db") as s:
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        v = s.verdicts()
        assert len(v) == 30 and v[paths[0]].value == "ok"  # the read-only process wrote nothing


def test_the_session_benchmark_runs_small(tmp_path, capsys):
    import json

    from benchmarks.bench_session import main as bench

    assert bench(["--n", "12", "--map-size", "24", "--verdicts", "5", "--repeat", "1", "--dir", str(tmp_path / "b"),
                  "--json", str(tmp_path / "b.json")]) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["n_images"] == 12 and figures["db_bytes"] > 0 and figures["reopen_s_median"] > 0
    assert figures["codecs"]["f16-split-zlib"]["lossless"] and not figures["codecs"]["u8-png"]["lossless"]
    assert "12 images" in capsys.readouterr().out
