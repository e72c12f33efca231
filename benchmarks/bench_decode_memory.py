"""Peak memory of a streamed ``scan`` over decompression bombs below the pixel limit (issue 27,
finding 12).

Writes ``--n`` PNGs of ``--side`` x ``--side`` grey pixels (a flat image with a thin bright line,
so each compresses to about 140 KB; 12000 x 12000 = 144 M pixels, under the 160 M limit), trains
a ``pixel-gaussian`` model (default settings: 256 px working size) on small parts, then runs
``anomaly-inspector scan --model M --workers W`` in a child process and reads the child's peak
RSS from the kernel (``os.wait4``). With ``--root`` another checkout's code does the scan
(``--root ../main`` is "before").

    .venv/bin/python benchmarks/bench_decode_memory.py --json docs/bench/decode-memory-cpu.json
    .venv/bin/python benchmarks/bench_decode_memory.py --root ../main --label before --json ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from benchmarks.bench_stream_scan import make_images, run_cli, train  # noqa: E402


def make_bombs(folder: Path, n: int, side: int, rgb: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if sum(1 for _ in folder.glob("*.png")) == n:
        return folder
    img = np.full((side, side, 3) if rgb else (side, side), 40, np.uint8)
    img[side // 2, :] = 220
    if rgb:
        img[:, side // 3, 0] = 200
    buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    del img
    for i in range(n):
        buf.tofile(str(folder / f"bomb{i}.png"))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rgb", action="store_true", help="colour bombs (three times the pixels' bytes)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "ai-bomb-bench")
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose code runs the scan")
    ap.add_argument("--label", default="after")
    ap.add_argument("--extra", default="", help="more scan options, e.g. --no-heatmaps")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bombs = make_bombs(args.data / f"bombs-{args.n}x{args.side}{'-rgb' if args.rgb else ''}", args.n, args.side,
                       args.rgb)
    model = args.data / "model"
    train(model, make_images(args.data / "good", 20, 64, seed=1), REPO)
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:
        rc, wall, rss, err = run_cli(["scan", str(bombs), "--detector", "pixel-gaussian", "--model", str(model),
                                      "--out", str(Path(tmp) / "out"), "--workers", str(args.workers), "-q",
                                      *args.extra.split()], args.root.resolve())
    row = {"label": args.label, "images": args.n, "side": args.side, "rgb": args.rgb, "file_kib": round(
        (bombs / "bomb0.png").stat().st_size / 1024, 1), "workers": args.workers, "extra": args.extra,
        "exit": rc, "wall_seconds": round(wall, 1), "peak_rss_mib": round(rss, 1), "stderr": err[-500:]}
    print(json.dumps(row), flush=True)
    if args.json:
        from benchmarks._common import machine

        args.json.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.json.read_text()) if args.json.exists() else {"runs": []}
        old["runs"].append({"machine": machine(), "command": " ".join(sys.argv), "row": row})
        args.json.write_text(json.dumps(old, indent=2))


if __name__ == "__main__":
    main()
