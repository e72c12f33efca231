"""``anomaly-inspector weights``: list, import and locate pretrained weights.

- ``weights list [--json] [--verify]``: each known set, where it was found or how to get it.
- ``weights import PATH --name NAME``: check the file's SHA-256 and copy it into the store.
  A file that is missing, of an unknown set or whose checksum does not match is a usage
  error: one line, exit 2, and nothing is copied.
- ``weights path``: print the store folder (``$ANOMALY_INSPECTOR_WEIGHTS`` overrides it).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.common import EXIT_FAILURE, EXIT_OK, UsageError, info


def add_parsers(sub: Any) -> argparse.ArgumentParser:
    w = sub.add_parser(
        "weights",
        help="list, import and locate pretrained weights (works offline)",
        description="Pretrained weights are looked up in: an explicit path, the weights folder "
                    "(see 'weights path'), the torch hub and Hugging Face caches, and installed packages. "
                    "A download happens only with ANOMALY_INSPECTOR_ALLOW_DOWNLOAD=1.",
    )
    ws = w.add_subparsers(dest="weights_command", metavar="ACTION")
    ls = ws.add_parser("list", help="each known weight set: found where, or how to get it")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--verify", action="store_true", help="also check each found file's checksum")
    im = ws.add_parser("import", help="check a weights file's checksum and copy it into the weights folder")
    im.add_argument("path", metavar="PATH", help="the weights file (or a folder holding it)")
    im.add_argument("--name", required=True, metavar="NAME", help="the weight set (see 'weights list')")
    im.add_argument("-q", "--quiet", action="store_true")
    ws.add_parser("path", help="print the weights folder")
    w.set_defaults(handler=cmd_weights)
    return w


def cmd_weights(args: argparse.Namespace) -> int:
    from core.io import weights as store

    action = args.weights_command or "list"
    if action == "path":
        print(store.weights_dir())
        return EXIT_OK
    if action == "import":
        try:
            dest = store.import_weights(args.path, args.name)
        except store.WeightsError as exc:
            raise UsageError(str(exc)) from None
        info(f"imported '{args.name}' into {dest}", args.quiet)
        print(dest)
        return EXIT_OK
    return _list(store, getattr(args, "json", False), getattr(args, "verify", False))


def _list(store: Any, as_json: bool, verify: bool) -> int:
    rows, bad = [], 0
    for st in store.status():
        row = {"name": st.name, "title": st.title, "file": st.filename,
               "found": st.found is not None,
               "source": st.found.source if st.found else None,
               "path": str(st.found.path) if st.found else None,
               "how_to_get": None if st.found else st.how_to_get}
        if verify and st.found is not None:
            try:
                store.verify(st.found.path, store.get_weight_set(st.name))
                row["checksum"] = "ok"
            except store.ChecksumError as exc:
                row["checksum"] = str(exc)
                bad += 1
        rows.append(row)
    if as_json:
        print(json.dumps({"folder": str(store.weights_dir()), "sets": rows}, indent=2))
    else:
        print(f"weights folder: {store.weights_dir()}")
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            if r["found"]:
                check = f"  [checksum {r['checksum']}]" if "checksum" in r else ""
                print(f"{r['name']:<{w}}  found ({r['source']}): {r['path']}{check}")
            else:
                print(f"{r['name']:<{w}}  missing: {r['how_to_get']}")
    return EXIT_FAILURE if bad else EXIT_OK
