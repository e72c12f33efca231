"""Issue 18: the streamed scan writes what the in-memory scan wrote, with maps kept on disk."""

import json
from pathlib import Path

import numpy as np
import pytest

from core.data.images import ImageSource, Skipped
from core.data.listing import list_folder
from core.detectors.registry import get_detector_class
from core.engine.scan_run import _plain_scan, scan_to_folder
from core.engine.stream_scan import prefetch
from core.engine.workflows import train_detector
from core.io.colormap import robust_range
from core.io.map_store import MapStore
from tests.conftest import make_part, write_png


def test_map_store_scale_is_robust_range_of_all_maps(tmp_path):
    rng = np.random.default_rng(3)
    maps = [rng.gamma(2.0, s, size=shape).astype(np.float16)
            for s, shape in [(1.0, (40, 70)), (3.0, (130, 200)), (0.5, (9, 9)), (2.0, (300, 256))]]
    maps[1][5, 7] = np.nan
    store = MapStore(tmp_path / "s")
    for i, m in enumerate(maps):
        store.add(i, m, m.shape)
    lo, hi = store.scale()
    rlo, rhi = robust_range([m.astype(np.float32) for m in maps])
    assert lo == rlo
    assert hi == pytest.approx(rhi, rel=1e-6)
    back = list(store.items())
    assert [i for i, _, _ in back] == [0, 1, 2, 3]
    assert all(np.array_equal(m.astype(np.float32), b, equal_nan=True) for m, (_, b, _) in zip(maps, back))


def test_prefetch_keeps_order_and_turns_bad_files_into_skips(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write_png(tmp_path / f"{i}.png", make_part(rng)) for i in range(7)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths.insert(3, bad)
    got = list(prefetch(paths, workers=3, window=4))
    assert [k for k, _ in got] == list(range(8))
    assert isinstance(got[3][1], Skipped) and got[3][1].path == bad
    assert all(isinstance(x, np.ndarray) for k, x in got if k != 3)


@pytest.fixture
def model_and_batch(tiny_parts):
    (tiny_parts / "batch" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cls = get_detector_class("pixel-gaussian")
    det = cls(cls.config_class(image_size=16, blur_sigma=1.0, batch_size=3), device="cpu")
    train_detector(det, ImageSource.from_folder(tiny_parts / "good"))
    return det, tiny_parts / "batch"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_streamed_scan_writes_what_the_in_memory_scan_wrote(model_and_batch, tmp_path):
    det, batch = model_and_batch
    listing = list_folder(batch)
    a = scan_to_folder(listing, tmp_path / "stream", lambda: det, workers=2)
    b = scan_to_folder(listing, tmp_path / "memory", lambda: det, scan=_plain_scan)
    assert a.result.rows == []  # nothing kept in memory
    assert (a.scored, a.flagged) == (b.scored, len(b.result.flagged)) == (8, len(b.result.flagged))
    fa, fb = _files(tmp_path / "stream"), _files(tmp_path / "memory")
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "heatmap_scale.json":
            sa, sb = json.loads(fa[name]), json.loads(fb[name])
            assert sa["min"] == sb["min"] and sa["max"] == pytest.approx(sb["max"], rel=1e-6)
        else:
            assert fa[name] == fb[name], name
    assert "broken.png" in fa["skipped.csv"].decode()
    assert not (tmp_path / "stream" / ".maps").exists()  # the raw maps go once the run is complete
