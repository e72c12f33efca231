"""``mutual``: zero-shot anomaly detection by mutual scoring of the unlabelled batch.

Paper: Li, Huang, Liu, Chen, Liu, Wang, Liu, Jin, Zhang, "MuSc: Zero-Shot Industrial Anomaly
Classification and Segmentation with Mutual Scoring of the Unlabeled Images", ICLR 2024. Section
numbers are the paper's. No training, no good images, no labels: a batch of parts is mostly good,
and a defect patch has few look-alikes among the *other* images of the batch.

- 3.2 LNAMD: patch features of a frozen backbone at one or several aggregation degrees r
  (``patch_sizes``; paper 1, 3, 5), from PatchCore's feature module (:mod:`.torch_model`);
  ``layer_norm`` is the paper's LayerNorm of each layer.
- 3.3 MSM: each patch's distance to its nearest patch in each other image, and its score the mean
  of the lowest 30 % of those distances (interval average, ``interval``); scores averaged over the
  degrees (:mod:`.scoring`).
- 3.4 RsCIN: image scores (the largest patch score) refined over a k-nearest-neighbour graph of
  image-level features, windows k = 1, 2, 3 (``rescore_windows``, paper MVTec AD).
- Maps: the patch scores upsampled bilinearly to the image and blurred (sigma 4, as the map of
  PatchCore and the paper's evaluation code).
- The batch is then split into a normal and a suspect group by :mod:`core.grouping` (done by
  :func:`core.engine.workflows.scan_images`, as for ``ldm-zero-shot``), so the GUI's grouping dock
  shows it unchanged; by a 2-component GMM by default (``group``): on bottle the only split that
  kept every defect with RsCIN on (docs/benchmarks.md, "mutual").

Departures, and why (the numbers are in docs/benchmarks.md, "mutual"):
- Backbone: the paper's ViT-L/14 (CLIP or DINO) cannot be fetched here and is slow on a CPU; the
  features are PatchCore's (the stride-8 and stride-16 stages of an ImageNet EfficientNet-Lite
  brought to one grid), with PatchCore's settings (``backbone``, ``image_size``, ``resize``,
  ``stage_weighting``, ``feature_dim``) so that the two detectors improve together. Our defaults
  differ from PatchCore's where measured: EfficientNet-Lite2 (MTD +2.9 image AUROC over Lite0) at
  160 px (+1.6 over 224 px on MTD, a quarter of the cost; bottle stays above 99.8). The stages are
  scored as one concatenated feature, not layer by layer. ``stage_weighting=standardize`` is not
  offered: it learns channel statistics from training images, and a zero-shot batch has none that
  stay fixed when the batch grows.
- One aggregation degree (3) by default, not the paper's three: on MTD 1,3,5 scored 0.9 below 3
  alone at three times the cost; on bottle both are above 99.8.
- References (cost): the paper compares each image with all N - 1 others; here each image takes a
  seeded sample of ``references`` others (16; 0 = all: the paper), chosen by rendezvous hashing of
  the two images' contents so that a grown batch changes an old image's references only where a
  new image ranks among them (:func:`.scoring.reference_sets`). Measured: from 8 to 64 references
  the image AUROC moves by less than a point.
- Exact nearest patches by one blocked matrix product per image against all its references
  (both directions of a pair from one product, so a pair is computed once), not a search per
  reference pair; faiss' exact flat search per pair is ``search=faiss`` (measured slower here).
- RsCIN's image feature: the deepest stage average-pooled (a CNN has no class token).
- Bounded memory and incremental re-scoring (:mod:`.cache`): stage maps and pair distances are
  kept in float16, keyed by image content; the mutual-score matrix is built degree by degree, so
  only one degree's patch features exist at a time; a re-run over a grown batch computes only the
  new images' features and the image pairs it has not seen.
- The interval average takes at least one reference (the authors' code fails below 1 / 0.3
  references); a batch needs at least 2 images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import ImageSource, Skipped, iter_batches
from core.detectors.backbones import BACKBONE_WEIGHTS
from core.detectors.base import FitError, OnResult, WeightRequirement, ZeroShotDetector
from core.detectors.common import gaussian_blur, map_to_input
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.mutual.cache import CacheStats, ImageEntry, MutualCache, content_digest
from core.detectors.mutual.scoring import (
    SEARCHES,
    interval_average,
    item_keys,
    pair_min_distances,
    reference_sets,
    rescore,
    squared_norms,
)
from core.detectors.mutual.torch_model import MultiDegreeFeatures
from core.detectors.patchcore.anomaly_map import top_mean
from core.detectors.patchcore.detector import BACKBONE_CHOICES, PatchCoreConfig, PatchCoreDetector, resolve_backbone
from core.detectors.patchcore.inputs import RESIZE_RULES, Frame, to_frame, valid_grid, working_frame
from core.detectors.training import weights_requirement
from core.grouping import METHODS
from core.io import weights as store
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, cancel_inside, check
from core.runtime.progress import ProgressFn

WEIGHTINGS = ("pool", "concat")
DISTANCES = ("cosine", "l2")
IMAGE_SCORES = ("max", "top_mean")
#: the measured defaults (docs/benchmarks.md, "mutual"): backbone, and the grouping of its scores
DEFAULT_BACKBONE = "efficientnet-lite2"
DEFAULT_GROUP = "gmm"
#: progress: features up to this share of the bar, the mutual scores up to the next
FEATURES_SHARE, PAIRS_SHARE = 0.3, 0.95


@dataclass
class MutualConfig(DetectorConfig):
    batch_size: int = field(default=8, metadata={"neutral": True, "help": "images per backbone batch", "min": 1, "max": 4096})
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={"help": "frozen CNN of PatchCore's feature module (measured best here: efficientnet-lite2; auto = PatchCore's choice); tiny-random is for tests only", "choices": BACKBONE_CHOICES})
    weights_path: str = field(default="", metadata={"help": "backbone weights file (empty: the weights store)", "advanced": True})
    image_size: int = field(default=160, metadata={"help": "working resolution, pixels a side of the square (measured best here: 160; PatchCore's default 224)", "min": 16, "max": 1024})
    resize: str = field(default="square", metadata={"help": "how an image becomes the working frame: square, keep (aspect kept, the square's area), pad (aspect kept, padded; padding never scored)", "choices": RESIZE_RULES})
    stage_weighting: str = field(default="pool", metadata={"help": "how the two stages share a patch feature: pool (equal shares of feature_dim) or concat (channels as they are)", "choices": WEIGHTINGS, "advanced": True})
    feature_dim: int = field(default=0, metadata={"zero": "auto", "help": "stage_weighting=pool: patch feature dimension (0 = auto, as PatchCore)", "min": 0, "max": 4096, "advanced": True})
    patch_sizes: tuple[int, ...] = field(default=(3,), metadata={"help": "aggregation degrees r, odd (paper, LNAMD: 1,3,5; measured no better here than 3 alone, at 3 times the cost); each degree scored on its own, then averaged"})
    layer_norm: bool = field(default=False, metadata={"help": "standardise each image's stage maps over all their channels and positions before the aggregation (paper: LayerNorm of each layer)"})
    distance: str = field(default="cosine", metadata={"help": "patch distance: cosine (paper: unit-length features) or l2", "choices": DISTANCES, "advanced": True})
    references: int = field(default=16, metadata={"zero": "all", "help": "other images each image is compared with, a seeded sample (0 = all of them: the paper; measured flat from 8 to 32)", "min": 0, "max": 1_000_000})
    interval: float = field(default=0.3, metadata={"help": "a patch's score is the mean of its lowest distances to this fraction of the references (paper: 0.3)", "min": 1e-3, "max": 1.0})
    image_score: str = field(default="max", metadata={"help": "image score from the patch scores: max (paper) or top_mean (mean of the largest, see top)", "choices": IMAGE_SCORES})
    top: float = field(default=0.01, metadata={"help": "image_score=top_mean: the fraction (below 1) or the number (1 or more) of largest patch scores averaged", "min": 1e-4, "max": 100_000, "advanced": True})
    rescore_windows: tuple[int, ...] = field(default=(1, 2, 3), metadata={"help": "image-level re-scoring (paper, RsCIN): neighbourhood sizes k averaged (paper, MVTec AD: 1,2,3); 0 = off"})
    blur_sigma: float = field(default=4.0, metadata={"neutral": True, "map": True, "help": "Gaussian blur of the map at the working resolution, pixels", "min": 0.0, "max": 64.0})
    search: str = field(default="torch", metadata={"neutral": True, "help": "exact nearest-patch search: torch (one blocked product per image) or faiss (flat index per pair)", "choices": SEARCHES, "advanced": True})
    group: str = field(default=DEFAULT_GROUP, metadata={"help": "how the batch is split into normal / suspect groups: a 2-component GMM (measured best for these scores), k-means or normalized cut", "choices": METHODS})

    def validate(self) -> None:
        super().validate()
        self.patchcore_config()  # the feature settings are PatchCore's: its own rules check them
        if not self.patch_sizes or any(p < 1 or p > 15 or p % 2 == 0 for p in self.patch_sizes):
            raise ConfigError(f"patch_sizes={','.join(map(str, self.patch_sizes)) or '(none)'}: give odd sizes "
                              "from 1 to 15, e.g. 1,3,5")
        w = self.rescore_windows
        if not w or any(k < 0 for k in w) or (0 in w and len(w) > 1):
            raise ConfigError(f"rescore_windows={','.join(map(str, w)) or '(none)'}: give neighbourhood sizes of 1 "
                              "or more (e.g. 1,2,3), or 0 alone for no re-scoring")

    def patchcore_config(self) -> PatchCoreConfig:
        """PatchCore's config of the same features (validated; ``patch_size`` is chosen per degree)."""
        cfg = PatchCoreConfig(backbone=self.backbone, weights_path=self.weights_path, image_size=self.image_size,
                              resize=self.resize, stage_weighting=self.stage_weighting, feature_dim=self.feature_dim,
                              patch_size=1)
        cfg.validate()
        return cfg


@dataclass
class _Item:
    index: int  # in the images given to score
    shape: tuple[int, int]
    digest: bytes


class MutualDetector(ZeroShotDetector):
    name = "mutual"
    title = "MuSc: mutual scoring of the batch (zero-shot)"
    summary = ("No training data: each patch is scored by its distance to the most similar patches of the other images "
               "of the batch (MuSc), image scores refined by similar images; then the batch is split into normal and "
               "suspect groups.")
    paper = "musc"
    produces_maps = True
    config_class = MutualConfig

    config: MutualConfig

    def __init__(self, config: MutualConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: MultiDegreeFeatures | None = None
        self._model_key: tuple = ()
        self.cache = MutualCache()
        #: what the last score computed and reused (also in ``meta["cache"]``)
        self.stats = CacheStats()

    # ------------------------------------------------------------------ weights
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """The default backbone's weights (a dependency)."""
        return weights_requirement([], BACKBONE_WEIGHTS[DEFAULT_BACKBONE])

    def _ensure_model(self) -> MultiDegreeFeatures:
        cfg = self.config
        backbone = resolve_backbone(cfg)
        key = (backbone, cfg.weights_path, cfg.feature_dim, cfg.stage_weighting, cfg.distance, str(self.device))
        if self.model is not None and key == self._model_key:
            return self.model
        # PatchCore builds its feature module (weights from the store, each part of an A+B backbone)
        builder = PatchCoreDetector(cfg.patchcore_config(), device=self.device)
        try:
            feats = builder._build(backbone)
        except store.WeightsError as exc:
            raise FitError(str(exc)) from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.model = MultiDegreeFeatures(feats, unit=cfg.distance == "cosine").to(self.device).eval()
        self._model_key = key
        self.meta.update({"backbone": backbone, "feature_dim": int(feats.feature_dim)})
        return self.model

    def _cache_settings(self) -> tuple:
        """Everything the cached maps and pair distances depend on."""
        cfg = self.config
        return (self._model_key, cfg.image_size, cfg.resize, cfg.layer_norm)

    # ------------------------------------------------------------------ scoring
    def score(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
              cancel: CancelToken | None = None, on_result: OnResult | None = None,
              skipped: list[Skipped] | None = None) -> dict[int, ScoreResult]:
        """Score the whole batch against itself (the scores of one image depend on the others)."""
        with torch.inference_mode(), cancel_inside(cancel):
            t0 = time.perf_counter()
            items = self._features(images, progress, cancel, skipped)
            if len(items) < 2:
                what = "" if not items else f" ({_name(images, items[0].index)})"
                raise FitError(f"mutual scores each image against the other images of the batch: it needs at least 2 "
                               f"readable images, got {len(items)}{what}; add images (a batch of 20 or more is better)")
            patch, refs = self.patch_scores_of(items, progress, cancel)
            return self._results(items, patch, refs, progress, cancel, on_result, t0)

    def patch_scores(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image's patch scores (its patch grid, before maps and re-scoring): for tests."""
        with torch.inference_mode():
            items = self._features(images, None, None, None)
            return self.patch_scores_of(items, None, None)[0]

    def _features(self, images, progress, cancel, skipped) -> list[_Item]:
        """Decode the batch and make sure every image content's stage maps are in the cache. An
        image's content is its working-frame tensor and its size: all its scores depend on."""
        cfg = self.config
        model = self._ensure_model()
        self.cache.use_settings(self._cache_settings())
        self.stats = CacheStats()
        items: list[_Item] = []
        total = len(images)
        for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
            todo: dict[bytes, tuple[np.ndarray, Frame]] = {}
            for i, img in zip(idx, batch):
                shape, frame, x, d = self._framed(img)
                items.append(_Item(i, shape, d))
                if d in self.cache.images or d in todo:
                    self.stats.images_reused += 1
                else:
                    todo[d] = (x, frame)
            self._extract(model, todo)
            self.stats.images_computed += len(todo)
            check(cancel)
            _report(progress, FEATURES_SHARE * (idx[-1] + 1) / max(1, total), f"features {idx[-1] + 1} of {total}")
        return items

    def _framed(self, img: np.ndarray) -> tuple[tuple[int, int], Frame, np.ndarray, bytes]:
        """An image's size, working frame, frame tensor and content key."""
        cfg = self.config
        shape = (int(img.shape[0]), int(img.shape[1]))
        frame = working_frame(shape[0], shape[1], cfg.image_size, cfg.resize, self._ensure_model().frame_stride)
        x = to_frame(img, frame)
        return shape, frame, x, content_digest(x, shape)

    def cache_digest(self, img: np.ndarray) -> bytes:
        """The key an image's cached features have under the current settings."""
        return self._framed(img)[3]

    def _extract(self, model: MultiDegreeFeatures, todo: dict[bytes, tuple[np.ndarray, Frame]]) -> None:
        """Stage maps (float16) and image-level features of new image contents, by frame shape."""
        by_shape: dict[tuple[int, int], list[bytes]] = {}
        for d, (_, fr) in todo.items():
            by_shape.setdefault(fr.shape, []).append(d)
        for ds in by_shape.values():
            maps = model.maps(torch.from_numpy(np.stack([todo[d][0] for d in ds])).to(self.device))
            for j, d in enumerate(ds):
                frame = todo[d][1]
                grid = valid_grid(frame, model.stride)
                vec = model.image_vector([m[j:j + 1] for m in maps], grid)[0]
                self.cache.images[d] = ImageEntry([m[j].half().cpu() for m in maps], frame, grid,
                                                  vec.float().cpu().numpy())

    def patch_scores_of(self, items: list[_Item], progress: ProgressFn | None,
                        cancel: CancelToken | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """3.3: every item's patch scores (its grid, float32) and its references (indices into items)."""
        cfg = self.config
        digests = [it.digest for it in items]
        refs = reference_sets(item_keys(digests), cfg.references, cfg.seed)
        self._compute_pairs(digests, refs, progress, cancel)
        used: list[tuple[bytes, bytes, int]] = []
        scores = []
        for i, it in enumerate(items):
            entry = self.cache.images[it.digest]
            n_patch = entry.grid[0] * entry.grid[1]
            per_degree = []
            for r in cfg.patch_sizes:
                rows = []
                for j in refs[i]:
                    key = (it.digest, digests[j], int(r))
                    if key[0] == key[1]:  # the same content: every patch has its twin at distance 0
                        rows.append(np.zeros(n_patch, dtype=np.float16))
                    else:
                        rows.append(self.cache.pairs[key])
                        used.append(key)
                per_degree.append(interval_average(np.stack(rows).astype(np.float32), cfg.interval, axis=0))
            scores.append(np.mean(per_degree, axis=0).reshape(entry.grid))  # the degrees averaged
        self.stats.pairs_needed = sum(len(r) for r in refs) * len(cfg.patch_sizes)
        self.cache.keep_only(digests, used)
        return scores, refs

    def _plan(self, digests: list[bytes], refs: list[np.ndarray], r: int) -> dict[int, list[tuple[int, bool]]]:
        """The image pairs to compute at degree ``r``: {query item: [(reference item, whether the
        reference's own distances to the query are needed too)]}; each content pair at most
        once, none that is cached."""
        wanted = {(digests[i], digests[j], r) for i, rs in enumerate(refs) for j in rs if digests[i] != digests[j]}
        cached = {k for k in wanted if k in self.cache.pairs}
        self.stats.pairs_reused += sum(1 for i, rs in enumerate(refs) for j in rs
                                       if (digests[i], digests[j], r) in cached)
        planned: set[tuple[bytes, bytes, int]] = set(cached)
        jobs: dict[int, list[tuple[int, bool]]] = {}
        for i, rs in enumerate(refs):
            for j in rs:
                key = (digests[i], digests[j], r)
                if key[0] == key[1] or key in planned:
                    continue
                back = (key[1], key[0], r)
                reverse = back in wanted and back not in planned
                jobs.setdefault(i, []).append((int(j), reverse))
                planned.add(key)
                if reverse:
                    planned.add(back)
        return jobs

    def _compute_pairs(self, digests: list[bytes], refs: list[np.ndarray], progress: ProgressFn | None,
                       cancel: CancelToken | None) -> None:
        """Fill the cache with the distances of the image pairs it lacks, one aggregation degree
        at a time (only one degree's patch features exist at once)."""
        cfg = self.config
        plans = [(int(r), self._plan(digests, refs, int(r))) for r in cfg.patch_sizes]
        steps = max(1, sum(len(jobs) for _, jobs in plans))
        done = 0
        for r, jobs in plans:
            needed = sorted({digests[i] for i in jobs} | {digests[j] for js in jobs.values() for j, _ in js})
            feats = self._degree_features(self.model, needed, r)
            norms = {d: squared_norms(f) for d, f in feats.items()}
            for k, (i, js) in enumerate(jobs.items()):
                q = feats[digests[i]].to(self.device)
                to_refs, from_refs = pair_min_distances(q, [feats[digests[j]].to(self.device) for j, _ in js],
                                                        cfg.search, both=any(b for _, b in js),
                                                        norms=[norms[digests[j]].to(self.device) for j, _ in js])
                for col, (j, reverse) in enumerate(js):
                    self.cache.pairs[(digests[i], digests[j], r)] = to_refs[:, col].astype(np.float16)
                    if reverse:
                        self.cache.pairs[(digests[j], digests[i], r)] = from_refs[col].astype(np.float16)
                self.stats.pairs_computed += len(js)
                done += 1
                check(cancel)
                _report(progress, FEATURES_SHARE + (PAIRS_SHARE - FEATURES_SHARE) * done / steps,
                        f"mutual scores: degree {r}, image {k + 1} of {len(jobs)}")
            del feats

    def _degree_features(self, model: MultiDegreeFeatures, digests: list[bytes], r: int) -> dict[bytes, torch.Tensor]:
        """(P, D) float16 patch features at degree ``r`` of each image content, on the CPU."""
        by_shape: dict[tuple, list[bytes]] = {}
        for d in digests:
            by_shape.setdefault(tuple(tuple(m.shape) for m in self.cache.images[d].maps), []).append(d)
        out: dict[bytes, torch.Tensor] = {}
        for ds in by_shape.values():
            for s in range(0, len(ds), 64):
                chunk = ds[s:s + 64]
                entries = [self.cache.images[d] for d in chunk]
                maps = [torch.stack([e.maps[k] for e in entries]).to(self.device) for k in range(len(entries[0].maps))]
                f = model.degree(maps, r, self.config.layer_norm)
                for j, (d, e) in enumerate(zip(chunk, entries)):
                    gh, gw = e.grid
                    out[d] = f[j, :gh, :gw].reshape(gh * gw, -1).half().cpu()
        return out

    def _results(self, items: list[_Item], patch: list[np.ndarray], refs: list[np.ndarray],
                 progress: ProgressFn | None, cancel: CancelToken | None, on_result: OnResult | None,
                 t0: float) -> dict[int, ScoreResult]:
        cfg = self.config
        raw = np.array([float(p.max()) if cfg.image_score == "max" else top_mean(torch.from_numpy(p), cfg.top)
                        for p in patch])
        vectors = np.stack([self.cache.images[it.digest].vector for it in items])
        final = rescore(raw, vectors, cfg.rescore_windows)  # 3.4
        self.meta["cache"] = self.stats.to_dict()
        self.meta["cache_mb"] = round(self.cache.nbytes() / 2 ** 20, 1)
        out: dict[int, ScoreResult] = {}
        n = len(items)
        for k, it in enumerate(items):
            entry = self.cache.images[it.digest]
            vh, vw = entry.frame.valid
            grid = torch.from_numpy(patch[k])
            up = F.interpolate(grid[None, None], size=(vh, vw), mode="bilinear", align_corners=False)[0]
            amap = gaussian_blur(up, cfg.blur_sigma)[0].numpy()
            res = ScoreResult(score=float(final[k]), anomaly_map=map_to_input(amap, it.shape),
                              columns={"raw_score": round(float(raw[k]), 6), "references": int(len(refs[k]))})
            res.image_shape = it.shape
            out[it.index] = res
            if on_result:
                on_result(it.index, res)
            _report(progress, PAIRS_SHARE + (1 - PAIRS_SHARE) * (k + 1) / n, f"scored {k + 1} of {n}")
            check(cancel)
        self.meta["score_seconds"] = round(time.perf_counter() - t0, 3)
        return out

    def describe_model(self) -> str:
        cfg = self.config
        refs = "all other images" if cfg.references == 0 else f"{cfg.references} other images each"
        return (f"{self.name} on {self.meta.get('backbone', cfg.backbone)} (zero-shot), degrees "
                f"{','.join(map(str, cfg.patch_sizes))}, {refs}")

    # ------------------------------------------------------------------ zero-shot: nothing to fit or save
    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """One batch scored on its own (``score`` scores the whole batch at once)."""
        res = self.score(images)
        return [res[i] for i in range(len(images))]

    def _moved(self) -> None:
        self.model = None  # rebuilt on the new device at the next score
        self._model_key = ()


def _report(progress: ProgressFn | None, frac: float, message: str) -> None:
    if progress is not None:
        progress(int(round(1000 * min(1.0, frac))), 1000, message)


def _name(images: Sequence[np.ndarray], i: int) -> str:
    return images.name(i) if isinstance(images, ImageSource) else f"image {i}"
