"""Benchmark of the session store: size and reopen time of an N-image session (synthetic).

Builds a session of ``--n`` images (tiny stand-in files: the store hashes bytes and never
decodes them) with one run whose anomaly maps are ``--map-size`` px float16 maps (smooth
synthetic blobs with float16 noise in the low bits, or the real maps of an existing session
with ``--maps-from S.db``, cycled), then measures:

* writing: syncing the images (hashing, then a re-sync that only stats), storing the run;
* deciding: milliseconds per committed verdict;
* size on disk (database + WAL after closing), per image;
* reopening: open + the latest run's rows with scores and flags + verdicts + notes + review
  band + UI state, i.e. everything a gallery shows (median of ``--repeat``, in-process, and
  once in a fresh Python process including imports);
* one image's map loaded and decoded (what the image view needs on selection);
* the map codecs side by side on the sample maps (KiB per map, encode and decode ms).

    .venv/bin/python benchmarks/bench_session.py [--n 5000] [--map-size 384] [--codec f16-split-zlib|u8-png]
        [--maps-from S.db] [--json docs/bench/session_store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.results import ScanResult, ScanRow  # noqa: E402
from core.results.threshold import calibrate  # noqa: E402
from core.session import open_session  # noqa: E402
from core.session.maps import CODECS, decode_map, encode_map  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    from core.runtime.device import machine_info

    info = machine_info()
    return (f"{info['cpu']}, {info['logical_cpus']} logical CPUs, Python {platform.python_version()}, "
            f"SQLite {__import__('sqlite3').sqlite_version}")


def synthetic_maps(k: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    maps = []
    for _ in range(k):
        m = np.zeros((size, size), np.float32)
        for _ in range(3):
            cy, cx, r, a = rng.random(4)
            m += (0.5 + 4 * a) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.002 + 0.02 * r))
        noise = rng.normal(0, 0.05, m.shape).astype(np.float32)
        m += cv2.GaussianBlur(noise, (0, 0), 2.0)  # smoothed noise, as a detector's blurred map has
        maps.append(np.abs(m).astype(np.float16))
    return maps


def real_maps(session: Path) -> list[np.ndarray]:
    with open_session(session, mode="ro") as s:
        return [r.anomaly_map for r in s.load_run(maps=True).rows if r.anomaly_map is not None]


def codec_table(maps: list[np.ndarray]) -> dict:
    raw = float(np.mean([m.nbytes for m in maps]))
    out = {"raw float16": {"kib_per_map": raw / 1024, "lossless": True}}
    plain = [zlib.compress(m.tobytes(), 1) for m in maps]
    out["zlib 1 on float16 as is"] = {"kib_per_map": float(np.mean([len(b) for b in plain])) / 1024, "lossless": True}
    t0 = time.perf_counter()
    six = [encode_map(m, CODECS[0], level=6) for m in maps]
    out["f16-split-zlib at level 6"] = {"kib_per_map": float(np.mean([len(b[3]) for b in six])) / 1024,
                                        "encode_ms": (time.perf_counter() - t0) / len(maps) * 1e3, "decode_ms": None,
                                        "max_error_of_range": 0.0, "lossless": True}
    for codec in CODECS:
        t0 = time.perf_counter()
        blobs = [encode_map(m, codec) for m in maps]
        enc = (time.perf_counter() - t0) / len(maps)
        t0 = time.perf_counter()
        back = [decode_map(*b) for b in blobs]
        dec = (time.perf_counter() - t0) / len(maps)
        err = max(float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()
                        / max(1e-12, float(a.max()) - float(a.min()))) for a, b in zip(maps, back))
        out[codec] = {"kib_per_map": float(np.mean([len(b[3]) for b in blobs])) / 1024, "encode_ms": enc * 1e3,
                      "decode_ms": dec * 1e3, "max_error_of_range": err, "lossless": err == 0.0}
    return out


REOPEN_CHILD = """
import sys, time
t0 = time.perf_counter()
from core.session import open_session
s = open_session(sys.argv[1], mode="ro")
res = s.load_run(); v = s.verdicts(); n = s.notes(); b = s.review_band(s.run().id); u = s.ui_state()
print(time.perf_counter() - t0, len(res.rows))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--map-size", type=int, default=384)
    ap.add_argument("--codec", choices=CODECS, default=CODECS[0])
    ap.add_argument("--maps-from", type=Path, help="take the maps from this session's latest run (cycled)")
    ap.add_argument("--verdicts", type=int, default=300, help="verdicts to commit one by one")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="where to build the session (default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench-session-")
    root = args.dir or Path(tmp.name)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.n):
        p = folder / f"part_{i:05d}.png"
        p.write_bytes(rng.bytes(256))
        paths.append(p)
    sample = real_maps(args.maps_from) if args.maps_from else synthetic_maps(48, args.map_size)
    source = f"real maps of {args.maps_from}" if args.maps_from else f"synthetic {args.map_size} px maps"
    codecs = codec_table(sample)

    rows = []
    for i, p in enumerate(paths):
        score = float(rng.gamma(2.0, 1.0) + (8.0 if i % 20 == 0 else 0.0))
        rows.append(ScanRow(p, score, None, (900, 900), sample[i % len(sample)],
                            {"mean_z": float(rng.random()), "max_z": score}))
    thr = calibrate(rng.gamma(2.0, 1.0, 200), 0.01)
    result = ScanResult("pixel-gaussian", rows, [], thr, 1.0)
    result.apply_threshold(thr)

    db = root / "S.db"
    figures: dict = {"n_images": args.n, "maps": source, "codec": args.codec, "machine": machine()}
    with open_session(db, folder=folder, map_codec=args.codec) as s:
        t0 = time.perf_counter()
        recs = s.sync_images(paths)
        figures["sync_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        recs = s.sync_images(paths)
        figures["sync_again_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_id = s.record_run(result, recs, fingerprint="0" * 64, settings={}, run_key="bench", started_at="-")
        figures["record_run_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in paths[: args.verdicts]:
            s.set_verdict(p, "ok")
        figures["ms_per_verdict"] = (time.perf_counter() - t0) / max(1, args.verdicts) * 1e3
        for p in paths[: args.verdicts // 10]:
            s.set_note(p, "looked at it")
        s.set_review_band(run_id, 3.0, 6.0)
        s.set_ui_state("sort", {"column": "score", "descending": True})
    size = sum(f.stat().st_size for f in root.iterdir() if f.name.startswith("S.db") and f.is_file())
    figures["db_bytes"] = size
    figures["db_mib"] = size / 2**20
    figures["kib_per_image"] = size / 1024 / args.n

    def reopen():
        with open_session(db, mode="ro") as s:
            res = s.load_run()
            s.verdicts(), s.notes(), s.review_band(run_id), s.ui_state()
            assert len(res.rows) == args.n

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        reopen()
        times.append(time.perf_counter() - t0)
    figures["reopen_s_median"] = statistics.median(times)
    figures["reopen_s_all"] = times
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", REOPEN_CHILD, str(db)], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    figures["reopen_fresh_process_s"] = float(out[0])
    with open_session(db, mode="ro") as s:
        t = []
        for p in paths[:50]:
            t0 = time.perf_counter()
            s.load_map(p, run_id)
            t.append(time.perf_counter() - t0)
    figures["load_one_map_ms_median"] = statistics.median(t) * 1e3
    figures["codecs"] = codecs

    print(f"{args.n} images, {source}, codec {args.codec} — {machine()}")
    print(f"  sync images: {figures['sync_first_s']:.2f} s first (hashing), {figures['sync_again_s']:.2f} s again (stat only)")
    print(f"  store the run: {figures['record_run_s']:.2f} s; a verdict: {figures['ms_per_verdict']:.2f} ms (committed)")
    print(f"  size: {figures['db_mib']:.1f} MiB ({figures['kib_per_image']:.1f} KiB per image)")
    print(f"  reopen (rows, scores, flags, verdicts, notes, band, UI state): median {figures['reopen_s_median']:.3f} s "
          f"in-process, {figures['reopen_fresh_process_s']:.3f} s in a fresh process with imports")
    print(f"  one map on selection: {figures['load_one_map_ms_median']:.2f} ms")
    for name, c in codecs.items():
        extra = ""
        if "encode_ms" in c:
            extra = f", encode {c['encode_ms']:.1f} ms"
            if c["decode_ms"] is not None:
                extra += f", decode {c['decode_ms']:.1f} ms"
            extra += f", max error {c['max_error_of_range']:.2g} of the map's range"
        print(f"  map {name:28s} {c['kib_per_map']:7.1f} KiB/map{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
