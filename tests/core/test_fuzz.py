"""Standing fuzz tests (issue 15): mutated image files through the image reader, mutated model
folders through model loading. Hypothesis, derandomized and bounded (about 20 s in all on a
loaded 2-core machine), plus the committed corpus in tests/data/.

Property, images: ``read_image`` / ``read_thumbnail`` return a finite float32 (H, W, 1|3)
image in [0, 1] (a uint8 thumbnail) or raise ImageReadError; nothing else, no hang.
Property, models: ``load_model`` returns a detector that scores an image (a finite score or
a reported skip), or raises CheckpointError with a one-line message naming no Python
exception; nothing else.
"""

import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.data.images import ImageReadError, ImageSource, read_image, read_thumbnail
from core.detectors.registry import create_detector, load_model
from core.engine.workflows import scan_images, train_detector
from core.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from tests.conftest import make_part

DATA = Path(__file__).resolve().parents[1] / "data"
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = (rng.random((12, 10, 3)) * 255).astype(np.uint8)
    out = {}
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        out[f"rgb{ext}"] = cv2.imencode(ext, rgb)[1].tobytes()
    out["grey16.png"] = cv2.imencode(".png", (rng.random((9, 7)) * 65535).astype(np.uint16))[1].tobytes()
    out["rgba.png"] = cv2.imencode(".png", np.dstack([rgb, rgb[:, :, :1]]))[1].tobytes()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG")
    out["palette.png"] = buf.getvalue()
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif.tobytes())
    out["exif8.jpg"] = buf.getvalue()
    return out


SEEDS = _seeds()


def check_image(path: Path) -> None:
    try:
        img = read_image(path)
    except ImageReadError as exc:
        assert str(exc)
    else:
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] in (1, 3)
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    try:
        th = read_thumbnail(path, 8)
    except ImageReadError:
        pass
    else:
        assert th.dtype == np.uint8 and th.ndim in (2, 3) and max(th.shape[:2]) <= 8


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i + draw(st.integers(1, 64))] = b"\0" * 8
    return name, bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_image_reader(tmp_path_factory, case):
    name, data = case
    p = tmp_path_factory.mktemp("fz") / name
    p.write_bytes(data)
    check_image(p)


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "hostile").iterdir()))
def test_image_corpus(name):
    check_image(DATA / "hostile" / name)


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    rng = np.random.default_rng(0)
    det = create_detector("pixel-gaussian", {"image_size": "8", "blur_sigma": "1"}, "cpu")
    train_detector(det, ImageSource([make_part(rng, size=16) for _ in range(6)]))
    folder = det.save(tmp_path_factory.mktemp("model") / "m")
    return (folder / CONFIG_NAME).read_bytes(), (folder / WEIGHTS_NAME).read_bytes()


IMAGE = make_part(np.random.default_rng(9), size=16)
_LEAK = re.compile(r"\b[A-Z][a-zA-Z]*(Error|Exception)\b")


def check_model(folder: Path) -> None:
    try:
        det = load_model(folder, device="cpu")
    except CheckpointError as exc:
        msg = str(exc)
        assert "\n" not in msg and not _LEAK.search(msg.replace("CheckpointError", "")), msg
        return
    res = scan_images(det, ImageSource([IMAGE]))
    assert all(np.isfinite(r.score) for r in res.rows)
    assert len(res.rows) + len(res.skipped) == 1


def write_model(root: Path, config: bytes, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_NAME).write_bytes(config)
    (root / WEIGHTS_NAME).write_bytes(weights)
    return root


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))


def _set(doc, path, value):
    if not path:
        return value
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return doc


@FUZZ
@given(data=st.data())
def test_fuzz_model_header(model_files, tmp_path_factory, data):
    config, weights = model_files
    doc = json.loads(config)
    path = data.draw(st.sampled_from(sorted(_paths(doc), key=str)))
    doc = _set(doc, path, data.draw(JSON))
    text = json.dumps(doc, allow_nan=True).encode()
    check_model(write_model(tmp_path_factory.mktemp("fm") / "m", text, weights))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([CONFIG_NAME, WEIGHTS_NAME]), pos=st.floats(0, 1), byte=st.integers(1, 255),
       cut=st.booleans())
def test_fuzz_model_bytes(model_files, tmp_path_factory, which, pos, byte, cut):
    files = dict(zip((CONFIG_NAME, WEIGHTS_NAME), model_files))
    data = bytearray(files[which])
    i = min(len(data) - 1, int(pos * len(data)))
    if cut:
        del data[i:]
    else:
        data[i] ^= byte
    files[which] = bytes(data)
    check_model(write_model(tmp_path_factory.mktemp("fb") / "m", files[CONFIG_NAME], files[WEIGHTS_NAME]))


def _corpus():
    return [json.loads(line) for line in (DATA / "hostile_models.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: c["why"])
def test_model_corpus(model_files, tmp_path, case):
    config, weights = model_files
    text = config.decode()
    doc = json.loads(text)
    if "raw_replace" in case:
        old, new = case["raw_replace"]
        old = old.replace("THRESHOLD", json.dumps(doc["threshold"]["value"]))
        assert old in text.replace('"value": ', '"value": ')
        text = text.replace(old, new)
    elif "set" in case:
        path, value = case["set"]
        text = json.dumps(_set(doc, tuple(path), float("nan") if value == "NaN" else value))
    elif "raw" in case:
        text = "[" * 100000 + "]" * 100000 if case["raw"] == "DEEP" else case["raw"]
    data = bytes.fromhex(case["raw_bytes_hex"]) if "raw_bytes_hex" in case else text.encode()
    folder = write_model(tmp_path / "m", data, weights)
    with pytest.raises(CheckpointError):
        load_model(folder, device="cpu")
    check_model(folder)


# ----------------------------------------------------------------------------- CSV cells (issue 27, finding 11)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=5))
def test_fuzz_csv_cells_are_never_formulas_and_come_back_exactly(texts):
    import csv as _csv

    from core.io.export import FORMULA_START, csv_row, csv_text, csv_text_raw

    cells = [csv_text(t) for t in texts]
    back = next(_csv.reader(io.StringIO(csv_row(cells), newline="")))
    assert back == cells
    assert [csv_text_raw(c) for c in back] == texts
    assert not any(c[:1] in FORMULA_START for c in back)


def test_negative_scores_and_numbers_are_never_neutralised():
    from core.io.export import csv_value, results_csv
    from core.results import ScanRow

    assert csv_value(-0.5) == "-0.5" and csv_value(np.float32(-2.0)) == "-2.0" and csv_value(-3) == "-3"
    assert csv_value("-3") == "'-3"  # text is text
    text = results_csv([ScanRow(Path("/p/-x.png"), -1.25, False, (4, 4), None, {"v": np.float32(-0.5)})])
    assert text.splitlines()[1] == "/p/-x.png,-1.25,false,-0.5"
    text = results_csv([ScanRow(Path("-x.png"), -1.25, False, (4, 4))])
    assert text.splitlines()[1] == "\"'-x.png\",-1.25,false"


# ----------------------------------------------------------------------------- sessions (issue 27)
@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    """A small session of a real scan: 6 images, one run, heat maps stored."""
    from core.engine.session_scan import scan_into_session
    from core.session import open_session
    from tests.conftest import write_png

    root = tmp_path_factory.mktemp("fs")
    rng = np.random.default_rng(0)
    det = create_detector("pixel-gaussian", {"image_size": "8", "blur_sigma": "1"}, "cpu")
    train_detector(det, ImageSource([make_part(rng, size=16) for _ in range(6)]))
    paths = [write_png(root / "parts" / f"p{i}.png", make_part(rng, size=16, defect=i % 2 == 0)) for i in range(6)]
    with open_session(root / "s.db", folder=root / "parts") as s:
        scan_into_session(s, det, ImageSource(paths), threshold=None)
        s.set_verdict(paths[0], "ng")
    return root


def _session_case_param(token, root):
    import zlib

    from core.session.maps import encode_map

    if token == "ZLIB_BOMB":
        return zlib.compress(b"\0" * (64 << 20), 9)
    if token == "PNG_OTHER_SIZE":
        return encode_map(np.zeros((7, 9), np.float32), "u8-png")[3]
    return token


def check_session(folder: Path) -> None:
    """Property: report and export of a (tampered) session either work or raise SessionError /
    SchemaError with one line; the report embeds no file outside the session's folder."""
    import base64

    from core.session import SchemaError, SessionError, open_session
    from core.session.export import export_session
    from core.session.report import build_report

    try:
        with open_session(folder / "s.db", mode="ro") as s:
            html = build_report(s)
            export_session(s, folder / "export", overwrite=True)
    except (SessionError, SchemaError) as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert "\u202e" not in html
    for uri in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", html):
        assert base64.b64decode(uri)[:3] == b"\xff\xd8\xff"  # only images we encoded


def _session_corpus():
    return [json.loads(line) for line in (DATA / "hostile_sessions.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", _session_corpus(), ids=lambda c: c["why"])
def test_session_corpus(session_file, tmp_path, case):
    import shutil
    import sqlite3

    folder = tmp_path / "copy"
    shutil.copytree(session_file, folder)
    meta = sqlite3.connect(folder / "s.db")
    meta.execute("UPDATE meta SET value = ? WHERE key = 'folder'", (str(folder / "parts"),))
    params = [_session_case_param(p, folder) for p in case.get("params", [])]
    for i, stmt in enumerate(s for s in case["sql"].split(";") if s.strip()):
        meta.execute(stmt, params if i == 0 else [])
    meta.commit()
    meta.close()
    check_session(folder)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(["runs", "results", "maps", "images", "meta"]), pos=st.floats(0, 1),
       value=st.one_of(st.text(max_size=12), st.binary(max_size=64), st.integers(-2**40, 2**40),
                       st.floats(allow_nan=True, allow_infinity=True), st.none()))
def test_fuzz_session_cells(session_file, tmp_path_factory, table, pos, value):
    import shutil
    import sqlite3

    folder = tmp_path_factory.mktemp("fsc") / "copy"
    shutil.copytree(session_file, folder)
    conn = sqlite3.connect(folder / "s.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'folder'", (str(folder / "parts"),))
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    col = cols[min(len(cols) - 1, int(pos * len(cols)))]
    try:
        conn.execute(f"UPDATE {table} SET {col} = ?", (value,))
        conn.commit()
    except sqlite3.IntegrityError:  # NOT NULL, CHECK or UNIQUE said no: the cell cannot be that
        conn.rollback()
    conn.close()
    check_session(folder)


# ----------------------------------------------------------------------------- weights (issue 27, finding 7)
@FUZZ
@given(data=st.data())
def test_fuzz_model_weights(model_files, tmp_path_factory, data):
    """Property of check_model for tampered weight values and dtypes (the checksum recomputed)."""
    import hashlib

    import torch
    from safetensors.torch import load, save

    config, weights = model_files
    tensors = load(weights)
    key = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[key].clone()
    how = data.draw(st.sampled_from(["value", "dtype", "scale"]))
    if how == "value":
        flat = t.view(-1)
        flat[data.draw(st.integers(0, flat.numel() - 1))] = data.draw(st.floats(allow_nan=True, allow_infinity=True,
                                                                               width=32))
    elif how == "dtype":
        t = t.to(data.draw(st.sampled_from([torch.float16, torch.float64, torch.int8, torch.int32, torch.bfloat16])))
    else:
        t = t * data.draw(st.sampled_from([-1.0, 0.0, 1e-30, 1e30]))
    tensors[key] = t
    raw = save(tensors)
    doc = json.loads(config)
    doc["weights_sha256"] = hashlib.sha256(raw).hexdigest()
    check_model(write_model(tmp_path_factory.mktemp("fw") / "m", json.dumps(doc).encode(), raw))


# ----------------------------------------------------------------------------- resume (issue 27, finding 4)
@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """An interrupted scan (SIGINT in this process after 6 of 13 images) and the uninterrupted one."""
    from tests.app.test_resume import _train
    from tests.app.test_session_hostile import interrupted, make_batch, model_scan

    root = tmp_path_factory.mktemp("fr")
    model = _train(root, "m", 0)
    batch = make_batch(root / "batch")
    assert model_scan(batch, root / "whole", model) == 0
    interrupted(batch, root / "partial", model, pytest.MonkeyPatch())
    return root, ["scan", str(batch), "--detector", "pixel-gaussian", "--model", str(model), "--set", "batch_size=1",
                  "-q"]


def _files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["results.csv", "skipped.csv", ".journal", ".maps/maps.idx", ".maps/maps.f16"]),
       pos=st.floats(0, 1), byte=st.integers(1, 255), cut=st.booleans())
def test_fuzz_resume_files(partial_run, tmp_path_factory, which, pos, byte, cut):
    """Property: whatever byte of an interrupted run is flipped or cut, resuming it gives the
    folder an uninterrupted scan writes."""
    import shutil

    from app.cli import main

    root, scan = partial_run
    out = tmp_path_factory.mktemp("rz") / "out"
    shutil.copytree(root / "partial", out)
    target = out / which
    data = bytearray(target.read_bytes())
    if data:
        i = min(len(data) - 1, int(pos * len(data)))
        if cut:
            del data[i:]
        else:
            data[i] ^= byte
        target.write_bytes(bytes(data))
    assert main([*scan, "--out", str(out)]) == 0
    assert _files_of(out) == _files_of(root / "whole")
