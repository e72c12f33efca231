"""``differnet``: normalizing flow on multi-scale features of a fixed pretrained CNN.

Paper: differnet (Rudolph et al., "Same Same But DifferNet", WACV 2021). The modules are in
:mod:`.torch_model` (3, 3.1, 4.2), the gradient maps in :mod:`.anomaly_map` (3.3); this
module is the training (3.1.2, 4.2) and scoring (3.2) glue.

Departures and our choices (each one a setting unless noted):
- Backbone: ``auto`` uses AlexNet, as the paper (4.2), when ``alexnet-imagenet`` is in the
  weights store, else EfficientNet-Lite0 (ImageNet), which installs from the package registry
  and so works offline. With EfficientNet-Lite0 we pool the output of its last MBConv block
  (320 channels -> 3 x 320 = 960 flow inputs, close to AlexNet's 3 x 256 = 768), not the
  1280-channel 1x1 head expansion (``efficientnet_features=head``): with 3 x 1280 = 3840
  inputs and 2048-wide subnets the flow would have about 320 M parameters instead of ~180 M.
  ``efficientnet-lite1`` / ``-lite2`` (larger, same registry route) are selectable, to separate
  the backbone's share from the training length's on MTD. ``tiny-random`` is a seeded random
  CNN for tests only.
- Smaller scales are area averages of the largest (the authors' code: nearest neighbour).
- Test transforms (3.2) are deterministic so that a saved model scores identically: T
  rotations evenly spaced over ``rotation_range`` (T = 1 is the untransformed image), and,
  where jitter is on, seeded brightness/contrast factors (identity for the first copy). The
  paper draws them at random.
- Score (eq. 5): the mean over the T copies of -log p_Z(z), i.e. mean_d z_d^2 / 2, as the paper
  and the authors' code; ``score_term=nll`` adds -log|det J| (the full NLL of eq. 4). Both are
  reported as columns. The loss (eq. 4) and both scores are divided by the dimension.
- ``train_copies`` (default 0 = the paper): the backbone is frozen, so the features of a
  transformed image never change; K > 0 computes them once for the transforms of the first K
  epochs and epoch e then reuses those of epoch (e - 1) mod K + 1. The transforms of epoch e
  are a pure function of (seed, e), so the first K epochs are exactly the paper's training
  (tested: same loss as uncached training), and K >= epochs is the paper's training with the
  CNN run once per image and epoch up front. K < epochs repeats augmentations: the cost of the
  CNN falls from ``epochs`` to K passes per image (on a CPU, the lever that makes the paper's
  192 epochs affordable); the flow still takes every epoch's steps.
- Adam with the paper's lr 2e-4 and the default betas; weight decay 1e-5 is from the authors'
  code (the paper does not give it). The brightness/contrast interval (``jitter_range``,
  default +-0.2) is ours: the number did not survive in our copy of the paper.
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

from core.data.images import Skipped
from core.detectors.base import Detector, FitError, WeightRequirement
from core.detectors.common import map_to_input, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.differnet.anomaly_map import differnet_map
from core.detectors.differnet.torch_model import (
    BACKBONE_WEIGHTS,
    DifferNet,
    DifferNetShape,
    brightness_contrast,
    flow_nll,
    latent_nll,
    rotate,
)
from core.detectors.training import (
    TrainingLoop,
    adam,
    check_pinned_weights,
    decode_training_cache,
    pinned_weights,
    shuffled_batches,
    weights_requirement,
)
from core.io import weights as store
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress

BACKBONE_CHOICES = ("auto", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "alexnet", "tiny-random")
JITTER_CHOICES = ("auto", "on", "off")
SCORE_CHOICES = ("latent", "nll")
FEATURE_CHOICES = ("blocks", "head")


@dataclass
class DifferNetConfig(DetectorConfig):
    batch_size: int = field(default=8, metadata={"neutral": True, "help": "images per scoring batch (each runs as T copies)", "min": 1, "max": 4096})
    train_batch_size: int = field(default=96, metadata={"neutral": True, "help": "feature vectors per training step (paper: 96)", "min": 2, "max": 4096})
    backbone: str = field(default="auto", metadata={"fixed": True, "help": "feature extractor: auto = AlexNet if its weights are in the store (paper), else EfficientNet-Lite0; tiny-random is for tests only", "choices": BACKBONE_CHOICES})
    weights_path: str = field(default="", metadata={"fixed": True, "help": "backbone weights file (empty: the weights store)", "advanced": True})
    epochs: int = field(default=192, metadata={"neutral": True, "help": "training epochs (paper: 192)", "min": 1, "max": 10000})
    lr: float = field(default=2e-4, metadata={"neutral": True, "help": "Adam learning rate (paper: 2e-4)", "min": 1e-8, "max": 1.0})
    weight_decay: float = field(default=1e-5, metadata={"neutral": True, "help": "Adam weight decay (authors' code: 1e-5)", "min": 0.0, "max": 1.0, "advanced": True})
    n_transforms_test: int = field(default=64, metadata={"help": "transformed copies T averaged per image at scoring (paper: 64)", "min": 1, "max": 1024})
    maps: bool = field(default=True, metadata={"neutral": True, "map": True, "help": "compute gradient heat maps (3.3); off = scores only, faster"})
    image_size: int = field(default=448, metadata={"fixed": True, "help": "largest input scale, pixels a side (paper: 448)", "min": 16, "max": 2048})
    n_scales: int = field(default=3, metadata={"fixed": True, "help": "input scales S, S/2, S/4... (paper: 3)", "min": 1, "max": 5, "advanced": True})
    rotation_range: float = field(default=360.0, metadata={"help": "rotations uniform over this many degrees (paper: full circle; 0 = none)", "min": 0.0, "max": 360.0})
    jitter: str = field(default="auto", metadata={"help": "brightness/contrast jitter (paper: on magnetic tiles); auto = on for grey images", "choices": JITTER_CHOICES})
    jitter_range: float = field(default=0.2, metadata={"help": "jitter factors uniform in [1 - r, 1 + r] (ours)", "min": 0.0, "max": 0.9, "advanced": True})
    train_copies: int = field(default=0, metadata={"neutral": True, "help": "0 = new random transforms every epoch (paper); K = K cached transformed copies per image (fast on CPU)", "min": 0, "max": 1024, "advanced": True})
    n_coupling_blocks: int = field(default=8, metadata={"fixed": True, "help": "coupling blocks of the flow (paper: 8)", "min": 1, "max": 64, "advanced": True})
    clamp_alpha: float = field(default=3.0, metadata={"fixed": True, "help": "soft clamping alpha, eq. 2 (paper: 3)", "min": 0.1, "max": 20.0, "advanced": True})
    subnet_width: int = field(default=2048, metadata={"fixed": True, "help": "width of the subnets' hidden layers (paper: 2048)", "min": 2, "max": 8192, "advanced": True})
    subnet_layers: int = field(default=3, metadata={"fixed": True, "help": "hidden layers per subnet (paper: 3)", "min": 1, "max": 8, "advanced": True})
    efficientnet_features: str = field(default="blocks", metadata={"fixed": True, "help": "EfficientNet-Lite map to pool: last block (320 ch) or head (1280 ch)", "choices": FEATURE_CHOICES, "advanced": True})
    map_sigma: float = field(default=4.0, metadata={"neutral": True, "map": True, "help": "Gaussian blur of the gradient maps, pixels at image_size (eq. 7)", "min": 0.0, "max": 64.0, "advanced": True})
    score_term: str = field(default="latent", metadata={"help": "score: -log p_Z(z) (eq. 5, paper) or the full NLL with log-det", "choices": SCORE_CHOICES, "advanced": True})

    def validate(self) -> None:
        super().validate()
        step = 2 ** (self.n_scales - 1)
        if self.image_size % step:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of 2^(n_scales-1) = {step}")
        if self.image_size // step < 8:
            raise ConfigError(f"image_size={self.image_size} is too small for {self.n_scales} scales (smallest < 8 px)")
        if self.weights_path and self.backbone in ("auto", "tiny-random"):
            raise ConfigError("weights_path needs a named backbone (alexnet or efficientnet-lite0/1/2)")


#: Rotated copies scored per forward pass; Cancel waits for at most one chunk.
COPY_CHUNK = 8


def resolve_backbone(cfg: DifferNetConfig) -> str:
    """``auto``: AlexNet (the paper) if its weights are found, else EfficientNet-Lite0."""
    if cfg.backbone != "auto":
        return cfg.backbone
    return "alexnet" if store.locate("alexnet-imagenet") is not None else "efficientnet-lite0"


class DifferNetDetector(Detector):
    name = "differnet"
    title = "DifferNet (normalizing flow on CNN features)"
    summary = ("Normalizing flow on multi-scale features of a fixed ImageNet CNN; score = mean "
               "-log-likelihood over rotated copies; map = gradient of the score.")
    paper = "differnet"
    produces_maps = True
    config_class = DifferNetConfig
    min_train_images = 2
    snapshots = True
    export_refusal = ("its anomaly maps are gradients of the flow's likelihood with respect to the input (backpropagation), which a forward-only graph does not compute")

    config: DifferNetConfig

    def __init__(self, config: DifferNetConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: DifferNet | None = None
        self._weights: tuple[str, store.Location] | None = None

    # ------------------------------------------------------------------ weights
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """AlexNet (paper) when found, else EfficientNet-Lite0; unavailable only if neither is."""
        return weights_requirement(["alexnet-imagenet"], "efficientnet-lite0-imagenet")

    def _build(self, backbone: str, feature_dim_check: int | None = None) -> DifferNet:
        cfg = self.config
        weights_file: Path | None = None
        if backbone in BACKBONE_WEIGHTS:
            loc = store.resolve(BACKBONE_WEIGHTS[backbone], cfg.weights_path or None)
            weights_file = loc.path
            self._weights = (BACKBONE_WEIGHTS[backbone], loc)
        shape = DifferNetShape(backbone=backbone, n_scales=cfg.n_scales, n_blocks=cfg.n_coupling_blocks,
                               clamp_alpha=cfg.clamp_alpha, subnet_width=cfg.subnet_width,
                               subnet_layers=cfg.subnet_layers, efficientnet_head=cfg.efficientnet_features == "head",
                               flow_seed=cfg.seed)
        model = DifferNet(shape, weights_file)
        if feature_dim_check is not None and model.feature_dim != feature_dim_check:
            raise ValueError(f"feature dimension {model.feature_dim} != saved {feature_dim_check}")
        return model

    # ------------------------------------------------------------------ transforms
    def _jitter_on(self, grey: bool) -> bool:
        j = self.config.jitter
        return (j == "on" or (j == "auto" and grey)) and self.config.jitter_range > 0

    def _random_transforms(self, n: int, jitter: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """4.2: rotations uniform over ``rotation_range`` (centred on 0), jitter factors uniform."""
        cfg = self.config
        deg = (torch.rand(n, generator=gen) - 0.5) * cfg.rotation_range
        if jitter:
            r = cfg.jitter_range
            b = 1 + (torch.rand(n, generator=gen) * 2 - 1) * r
            c = 1 + (torch.rand(n, generator=gen) * 2 - 1) * r
        else:
            b = c = torch.ones(n)
        return deg, b, c

    def _test_transforms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """3.2: T fixed transforms (deterministic, see the module notes); the first is the identity."""
        cfg = self.config
        t = cfg.n_transforms_test
        r = cfg.rotation_range
        if t == 1 or r == 0:
            deg = torch.zeros(t)
        elif r >= 360.0:
            deg = torch.arange(t, dtype=torch.float32) * (360.0 / t)
            deg = torch.where(deg > 180.0, deg - 360.0, deg)
        else:
            deg = torch.linspace(-r / 2, r / 2, t)
            deg[torch.argmin(deg.abs())] = 0.0
        b = torch.ones(t)
        c = torch.ones(t)
        if self.meta.get("jitter") and t > 1:
            gen = torch.Generator().manual_seed(cfg.seed + 7919)
            _, b[1:], c[1:] = self._random_transforms(t - 1, True, gen)
        return deg, b, c

    @staticmethod
    def _apply(x: torch.Tensor, deg: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = rotate(x, deg)
        if bool((b != 1).any() or (c != 1).any()):
            x = brightness_contrast(x, b, c)
        return x

    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        backbone = resolve_backbone(cfg)

        # Decode and resize once to the largest scale; float16 on the CPU halves the cache.
        cache = decode_training_cache(self.name, images, cfg.image_size, cfg.batch_size, self.min_train_images,
                                      SubProgress(progress, 0.0, 0.05, "reading"), cancel, skipped,
                                      channels=3, dtype=torch.float16)
        data, grey, n = cache.data, cache.grey, cache.n
        del cache
        jitter = self._jitter_on(grey)

        self._weights = None
        try:
            model = self._build(backbone).to(self.device)
        except store.WeightsError as exc:
            raise FitError(str(exc)) from None
        gen = torch.Generator().manual_seed(cfg.seed)
        bs = cfg.train_batch_size
        dev = self.device

        def extract(xb: torch.Tensor, deg, b, c) -> torch.Tensor:
            """Features of transformed images, in chunks of 32 to bound the CNN's memory."""
            out = []
            with torch.no_grad():
                for s in range(0, xb.shape[0], 32):
                    sl = slice(s, s + 32)
                    out.append(model.features(self._apply(xb[sl].to(dev).float(), deg[sl], b[sl], c[sl])))
            return torch.cat(out)

        def epoch_transforms(epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """The transforms of every training image in ``epoch`` (1-based): a function of
            (seed, epoch) alone, so cached and uncached training see the same ones."""
            return self._random_transforms(n, jitter, torch.Generator().manual_seed(cfg.seed * 100003 + 7 * epoch + 1))

        # Optional cache of the features of the first K epochs' transforms (see module notes).
        bank = None
        if cfg.train_copies > 0:
            feat = SubProgress(progress, 0.05, 0.35, "extracting features")
            k = min(cfg.train_copies, cfg.epochs)
            bank = torch.empty(k, n, model.feature_dim)
            jobs = [(j, i) for j in range(k) for i in range(0, n, bs)]
            tf = None
            for done, (j, i) in enumerate(jobs, 1):
                check(cancel)
                if i == 0:
                    tf = epoch_transforms(j + 1)
                sl = slice(i, i + bs)
                bank[j, sl] = extract(data[sl], tf[0][sl], tf[1][sl], tf[2][sl]).cpu()
                feat(done, len(jobs), f"copy {j + 1}/{k}")

        # 3.1.2 / 4.2: maximise the likelihood (minimise eq. 4) of transformed training images.
        params = [p for p in model.flow.parameters() if p.requires_grad]
        opt = adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        base_meta = {
            "backbone": backbone,
            "feature_dim": int(model.feature_dim),
            "grey": bool(grey),
            "jitter": bool(jitter),
            "n_train": int(n),
        }
        if self._weights is not None:
            base_meta["weights"] = pinned_weights(self._weights)
        loop = TrainingLoop(self.name, opt, epochs=cfg.epochs, steps_per_epoch=math.ceil(n / bs),
                            progress=SubProgress(progress, 0.35 if bank is not None else 0.05, 0.99, "training"),
                            cancel=cancel,
                            **self._snapshots(lambda: (model, {**base_meta, "train_seconds": time.perf_counter() - t0 - loop.paused, "steps": loop.steps})))
        shuffle = shuffled_batches(n, bs, gen)
        current: dict[str, Any] = {}

        def batches(epoch: int) -> list[torch.Tensor]:
            current["epoch"] = epoch
            current["tf"] = None if bank is not None else epoch_transforms(epoch)
            return shuffle(epoch)

        def step(bidx: torch.Tensor) -> tuple[torch.Tensor, int]:
            if bank is not None:
                f = bank[(current["epoch"] - 1) % bank.shape[0], bidx].to(dev)
            else:
                deg, b, c = current["tf"]
                f = extract(data[bidx], deg[bidx], b[bidx], c[bidx])
            z, log_jac = model.flow(f)
            return flow_nll(z, log_jac).mean(), bidx.numel()

        run = loop.run(batches, step, module=model)
        history = run.history
        self.model = model  # only now: a cancelled fit leaves no half-trained model behind
        self.meta = {
            **base_meta,
            "epochs": int(cfg.epochs),
            **run.record(),
            "flow_parameters": int(sum(p.numel() for p in params)),
            "fit_seconds": time.perf_counter() - t0,
        }
        if progress:
            progress(1000, 1000, f"fitted: loss {history[-1]:.4f} ({backbone}, {model.feature_dim} features)")

    # ------------------------------------------------------------------ score
    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        cfg = self.config
        model = self.model
        model.eval()
        results = []
        # Detector.score runs under inference_mode; the gradient maps (3.3) need autograd, so
        # leave it here and build every tensor afresh inside.
        with torch.inference_mode(False), torch.set_grad_enabled(cfg.maps):
            deg, b, c = self._test_transforms()
            t = deg.numel()
            x_all = to_tensor_batch(images, cfg.image_size, 3).clamp_(0.0, 1.0)
            n_img = len(images)
            for i, img in enumerate(images):
                # 3.2: the T transformed copies of one image run as batches of COPY_CHUNK, with the
                # cancel / progress hook between them (a copy's score and its gradient depend on that
                # copy alone, so chunking changes nothing but the latency of Cancel).
                lat_parts, nll_parts, grad_parts = [], [], []
                for s in range(0, t, COPY_CHUNK):
                    self._step(i * t + s, n_img * t, f"image {i + 1} of {n_img}, copy {s + 1} of {t}")
                    sl = slice(s, s + COPY_CHUNK)
                    n_c = deg[sl].numel()
                    copies = self._apply(x_all[i:i + 1].expand(n_c, -1, -1, -1).to(self.device), deg[sl], b[sl], c[sl])
                    copies = copies.detach().clone().requires_grad_(cfg.maps)
                    z, log_jac = model(copies)
                    lat = latent_nll(z)
                    nll = flow_nll(z, log_jac)
                    per_copy = lat if cfg.score_term == "latent" else nll
                    if cfg.maps:
                        (grads,) = torch.autograd.grad(per_copy.sum(), copies)
                        grad_parts.append(grads.detach())
                    lat_parts.append(lat.detach())
                    nll_parts.append(nll.detach())
                lat, nll = torch.cat(lat_parts), torch.cat(nll_parts)
                per_copy = lat if cfg.score_term == "latent" else nll
                amap = None
                if cfg.maps:
                    m = differnet_map(torch.cat(grad_parts), deg.to(self.device), cfg.map_sigma)
                    amap = map_to_input(m.cpu().numpy().astype(np.float32), img.shape)
                results.append(ScoreResult(
                    score=float(per_copy.mean()),
                    anomaly_map=amap,
                    columns={"score_latent": float(lat.mean()), "score_nll": float(nll.mean()),
                             "score_max_copy": float(per_copy.max())},
                ))
        return results

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.flow_state().items()}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._weights = None
        model = self._build(str(meta["backbone"]), int(meta["feature_dim"]))
        check_pinned_weights(self._weights, meta.get("weights"))
        model.load_flow_state(tensors)
        self.model = model.to(self.device).eval()

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
