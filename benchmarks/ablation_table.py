"""The ablation table of docs/benchmarks.md from bench JSON files (issue 24).

    python benchmarks/ablation_table.py docs/bench/ablation/mtd-*.json

One row per JSON file: the row name (the file name after its data tag), what it changed from the
defaults of the run (the settings that differ from the first file's, which should be the
``default`` row), image and pixel AUROC, AUPRO, the self-check AUROC where recorded, fit seconds,
scoring images/s and the bank size. Files ending in ``.part.json`` (a run in progress) are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def rows(paths: list[Path]) -> list[str]:
    docs = [(p, json.loads(p.read_text())) for p in paths if not p.name.endswith(".part.json")]
    if not docs:
        return []
    base = next((d for p, d in docs if p.stem.endswith("-default")), docs[0][1])["config"]
    out = ["| row | changed | image AUROC | pixel AUROC | AUPRO | self-check | fit s | images/s |",
           "|---|---|---|---|---|---|---|---|"]
    for p, d in docs:
        changed = " ".join(f"{k}={v}" for k, v in d["config"].items() if base.get(k) != v and k != "seed") or "—"
        m, t = d["metrics"], d["timing"]
        check = (d.get("self_check") or {}).get("auroc")
        out.append(f"| {p.stem} | {changed} | {_fmt(m['image_auroc'])} | {_fmt(m['pixel_auroc'])} | "
                   f"{_fmt(m['aupro'])} | {_fmt(check)} | {_fmt(t['fit_seconds'], 0)} | "
                   f"{_fmt(t['score_images_per_second'], 1)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print("\n".join(rows(sorted(args.files, key=lambda p: (not p.stem.endswith("-default"), p.name)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
