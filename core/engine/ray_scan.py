"""``scan --engine ray``: the streamed scan with its images scored by Ray Data actors.

The folder is listed on the driver as for a local scan; the paths to score (by listing index)
become a Ray Dataset, and :class:`RayScorer` — a callable class, so Ray builds it once per
actor — loads the saved model once and scores batches with ``map_batches`` (one GPU per actor
when the cluster has GPUs, ``num_gpus=1``; otherwise CPU actors). Each batch comes back to the
driver as plain columns: the index, the score, the reason a file was skipped (the same text
:func:`core.data.images.read_image` gives locally), the detector's columns, the image size and
the anomaly map already reduced the way a local scan keeps it (float16, at most 384 px a side).

**Heat maps are returned, not written by the workers**: the driver feeds the returned maps to
the same :func:`core.engine.stream_scan.stream_scan` as a local scan, which writes
``results.csv`` as the rows come, keeps the maps in its on-disk store and colours them at the
end on the batch-wide scale. So the output folder only has to be on the driver's disk, the
outputs are the local scan's (same rows, same order, same skipped files; scores equal up to
float rounding of different batch compositions), and interrupts and resume work as locally.
What every node must read at the same path: the model folder and the images.

Ray is an optional extra (``pip install -e '.[distributed]'``); :func:`ray_available` says
whether it is installed, and nothing here imports it before it is used.
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.data.images import ImageReadError, Skipped, read_image
from core.results import ScoreResult, compact_map
from core.runtime.cancel import CancelToken, check

EXTRA_HINT = "pip install -e '.[distributed]'  (or: pip install 'ray[data]')"


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None


class RayScorer:
    """Loads the model once per actor; ``__call__`` scores one batch of ``{index, path}``."""

    def __init__(self, model_dir: str, overrides: dict[str, Any], use_gpu: bool) -> None:
        from core.detectors.registry import load_model

        self.detector = load_model(model_dir, device="cuda" if use_gpu else "cpu")
        if overrides:
            self.detector.change_settings(overrides)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = [int(i) for i in batch["index"]]
        paths = [Path(os.fsdecode(bytes(p))) for p in batch["path"]]
        images, reasons, where = [], [""] * len(paths), []
        for k, p in enumerate(paths):
            try:
                images.append(read_image(p))
                where.append(k)
            except ImageReadError as exc:
                reasons[k] = str(exc)
        results: dict[int, ScoreResult] = dict(zip(where, self.detector.score(images).values())) if images else {}
        n = len(paths)
        score = np.full(n, np.nan)
        maps, cols = [b""] * n, ["{}"] * n
        mh, mw, ih, iw = (np.zeros(n, np.int64) for _ in range(4))
        for k, res in results.items():
            score[k] = res.score
            ih[k], iw[k] = res.image_shape
            cols[k] = json.dumps(res.columns)
            if res.anomaly_map is not None:
                m = compact_map(res.anomaly_map)
                mh[k], mw[k] = m.shape
                maps[k] = m.tobytes()
        return {"index": np.asarray(index, np.int64), "score": score, "reason": np.asarray(reasons, dtype=object),
                "columns": np.asarray(cols, dtype=object), "map": np.asarray(maps, dtype=object),
                "map_h": mh, "map_w": mw, "img_h": ih, "img_w": iw}


def _to_event(rec: dict[str, Any], path: Path):
    if rec["reason"]:
        return Skipped(path, str(rec["reason"]))
    m = None
    if int(rec["map_h"]):
        m = np.frombuffer(bytes(rec["map"]), dtype=np.float16).reshape(int(rec["map_h"]), int(rec["map_w"]))
    return ScoreResult(float(rec["score"]), anomaly_map=m, columns=json.loads(rec["columns"]),
                       image_shape=(int(rec["img_h"]), int(rec["img_w"])))


class RayEngine:
    """The event source of :func:`core.engine.stream_scan.stream_scan` on a Ray cluster.

    ``address`` None starts (or joins) a Ray instance on this machine; ``"auto"`` or
    ``"ray://host:10001"`` / ``"host:6379"`` joins a cluster. A Ray instance this engine
    started is shut down when the scan ends; one that was already running is left alone.
    """

    def __init__(self, model_dir: str | os.PathLike, overrides: dict[str, Any] | None = None, *,
                 address: str | None = None, batch_size: int = 16, actors: int | None = None,
                 cancel: CancelToken | None = None) -> None:
        self.model_dir = str(Path(model_dir).resolve())
        self.overrides = dict(overrides or {})
        self.address = address
        self.batch_size = max(1, int(batch_size))
        self.actors = actors
        self.cancel = cancel

    def __call__(self, paths: Sequence[Path], indices: Sequence[int]) -> Iterator[tuple[int, object]]:
        import ray

        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
            started = True
        try:
            yield from self._run(ray, paths, indices)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, paths: Sequence[Path], indices: Sequence[int]) -> Iterator[tuple[int, object]]:
        if not paths:
            return
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress bar says how far it is
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n_actors = self.actors or max(1, gpus if gpus else int(res.get("CPU", 1)))
        n_actors = max(1, min(n_actors, -(-len(paths) // self.batch_size)))
        by_index = dict(zip(indices, paths))
        ds = ray.data.from_items([{"index": int(i), "path": os.fsencode(str(p))} for i, p in zip(indices, paths)],
                                 override_num_blocks=max(1, min(len(paths) // self.batch_size, 4 * n_actors)))
        scored = ds.map_batches(RayScorer, fn_constructor_kwargs={"model_dir": self.model_dir,
                                                                  "overrides": self.overrides, "use_gpu": gpus > 0},
                                batch_size=self.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=n_actors),
                                num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)
        # Emit in index order whatever order batches arrive in (preserve_order keeps this small).
        heap: list[tuple[int, dict]] = []
        order = iter(sorted(indices))
        want = next(order, None)
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            check(self.cancel)
            cols = list(batch)
            for k in range(len(batch["index"])):
                rec = {c: batch[c][k] for c in cols}
                heapq.heappush(heap, (int(rec["index"]), rec))
            while heap and heap[0][0] == want:
                i, rec = heapq.heappop(heap)
                yield i, _to_event(rec, by_index[i])
                want = next(order, None)
