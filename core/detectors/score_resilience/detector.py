"""``score-resilience``: anomaly detection by score-based perturbation resilience.

Paper: score-based-perturbation-resilience (Shin et al.). A noise-conditional score network
(:mod:`.torch_model`, sections 4.3 and 5.3) is trained from scratch on good images by
denoising score matching; an image is perturbed N times at a small noise level, restored in
one step with the score, and the per-pixel restoration error is the anomaly map
(:mod:`.anomaly_map`, section 4.4 and Algorithm 1). The image score is the map's maximum.
No external weights.

Paper settings (5.3) are the defaults: 192x192 inputs, sigma = 25, k ~ U(0, 1] in training and
k = 0.001 at inference, N = 3, batch 16, AdamW (betas 0.9/0.999, lr 1e-4, weight decay 1e-3),
lr / 10 after 1/3 and 2/3 of training (MVTec; ``lr_schedule=constant`` is their MPDD/BTAD
setting), EMA 0.9999 (the EMA weights are the ones saved and scored), no augmentation,
31x31 mean filter, Lanczos resizing of the map.

Departures and choices where the paper is silent (each is a setting or stated here):
- Training budget: ``epochs`` (paper: 3000) and ``max_minutes`` (default 30, 0 = none),
  whichever ends first. The lr steps happen at 1/3 and 2/3 of that budget (by epochs or time,
  whichever is further along), which equals the paper's epochs 1000/2000 of 3000.
- Architecture: the paper's U-Net is in its supplementary material, which we lack; default
  diffusers ``UNet2DModel`` with widths (64, 128, 256, 256), 2 residual blocks per level,
  no attention (for speed; ``attention=true`` adds it at the two lowest levels).
- EMA warm-up ``min(decay, (1 + t) / (10 + t))`` (``ema_warmup``; see :class:`.torch_model.EMA`).
- bfloat16 autocast for training on CUDA (``amp``) and, when asked, on the CPU (``amp_cpu``,
  off by default); scoring always runs in float32.
- Scoring is deterministic: the N noise draws come from a CPU generator seeded with
  ``seed``, the same draws for every image (so scores do not depend on batch composition or
  device), and the N draws of an image run as one batch (Algorithm 1, "parallel processing").
- Data in [0, 1], noise in that scale (see :mod:`.torch_model`); grey and colour both work
  (the channel count is taken from the training images, as in the other detectors).
- Input resizing: the paper resizes images with Lanczos (5.3), most likely PIL's, which
  low-passes before subsampling. OpenCV's Lanczos does not (it aliases on a 4-5x reduction),
  so images are area-averaged (the shared helper); the map is upsampled to the input with
  OpenCV's Lanczos, where the two agree.
- The bench scores pixels at 256 px; we return maps at the input's resolution, and the
  mean filter runs at the working resolution before that resize (see :mod:`.anomaly_map`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.images import Skipped
from core.detectors.base import Detector
from core.detectors.common import load_module_state, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.score_resilience.anomaly_map import error_maps, map_to_input_lanczos
from core.detectors.score_resilience.torch_model import EMA, ScoreNet, ScoreNetShape, dsm_loss, sigma_k
from core.detectors.training import (
    TrainingLoop,
    adam,
    check_crop,
    decode_training_cache,
    random_crops,
    shuffled_batches,
    training_autocast,
)
from core.results import ScoreResult
from core.runtime.cancel import CancelToken
from core.runtime.progress import ProgressFn, SubProgress

LR_SCHEDULES = ("step", "constant")


@dataclass
class ScoreResilienceConfig(DetectorConfig):
    image_size: int = field(default=192, metadata={"fixed": True, "help": "working resolution, pixels a side (paper: 192)", "min": 8, "max": 1024})
    epochs: int = field(default=3000, metadata={"neutral": True, "help": "training epochs (paper: 3000); training stops at epochs or max_minutes, whichever first", "min": 1, "max": 100000})
    max_minutes: float = field(default=30.0, metadata={"neutral": True, "help": "training time limit in minutes (0 = no limit)", "min": 0.0, "max": 100000.0})
    lr: float = field(default=1e-4, metadata={"neutral": True, "help": "AdamW learning rate (paper: 1e-4)", "min": 1e-8, "max": 1.0})
    lr_schedule: str = field(default="step", metadata={"neutral": True, "help": "step: lr/10 after 1/3 and 2/3 of the budget (paper, MVTec); constant (paper, MPDD/BTAD)", "choices": LR_SCHEDULES})
    weight_decay: float = field(default=1e-3, metadata={"neutral": True, "help": "AdamW weight decay (paper: 1e-3)", "min": 0.0, "max": 1.0, "advanced": True})
    ema_decay: float = field(default=0.9999, metadata={"neutral": True, "help": "EMA rate of the saved weights (paper: 0.9999)", "min": 0.0, "max": 1.0, "advanced": True})
    ema_warmup: bool = field(default=True, metadata={"neutral": True, "help": "EMA rate min(decay, (1+t)/(10+t)) at step t (not in the paper)", "advanced": True})
    sigma: float = field(default=25.0, metadata={"help": "noise scale parameter sigma of sigma_k (paper: 25)", "min": 1.0001, "max": 1000.0})
    k: float = field(default=0.001, metadata={"help": "noise level k in (0, 1] used for scoring (paper: 0.001)", "min": 1e-6, "max": 1.0})
    n_draws: int = field(default=3, metadata={"help": "noise draws N averaged per image (paper: 3)", "min": 1, "max": 64})
    smooth_size: int = field(default=31, metadata={"help": "mean filter, pixels a side at working size (paper: 31; 1 = off)", "min": 1, "max": 255})
    block_out_channels: tuple[int, ...] = field(default=(64, 128, 256, 256), metadata={"fixed": True, "help": "U-Net widths per level (ours; the paper's are in its supplement)", "advanced": True})
    layers_per_block: int = field(default=2, metadata={"fixed": True, "help": "residual blocks per U-Net level", "min": 1, "max": 8, "advanced": True})
    norm_num_groups: int = field(default=32, metadata={"fixed": True, "help": "GroupNorm groups (must divide every width)", "min": 1, "max": 256, "advanced": True})
    attention: bool = field(default=False, metadata={"fixed": True, "help": "self-attention in the two lowest U-Net levels (slower)", "advanced": True})
    train_crop: int = field(default=0, metadata={"neutral": True, "help": "train on random crops of this many pixels of the working-size images (0 = whole images, the paper); scoring always sees whole images", "min": 0, "max": 1024, "advanced": True})
    amp: bool = field(default=True, metadata={"neutral": True, "help": "bfloat16 mixed precision for training on CUDA", "advanced": True})
    amp_cpu: bool = field(default=False, metadata={"neutral": True, "help": "bfloat16 autocast for training on the CPU too (measured 1.8-1.9x faster a step on a 2-core CPU with bf16 instructions; emulated, and slower, on CPUs without them; quality in docs/benchmarks.md); scoring stays float32", "advanced": True})

    def validate(self) -> None:
        super().validate()
        if not self.block_out_channels or any(c < 1 for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels={self.block_out_channels} needs positive widths")
        if self.smooth_size > 1 and self.smooth_size % 2 == 0:
            raise ConfigError(f"smooth_size={self.smooth_size} must be odd (or 1 for no smoothing)")
        try:
            self.shape(3).check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_crop(self.train_crop, self.image_size, 2 ** (len(self.block_out_channels) - 1))

    def shape(self, channels: int) -> ScoreNetShape:
        return ScoreNetShape(in_channels=channels, sample_size=self.image_size,
                             block_out_channels=tuple(self.block_out_channels),
                             layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                             attention=self.attention)


class ScoreResilienceDetector(Detector):
    name = "score-resilience"
    title = "Score-based perturbation resilience"
    summary = ("U-Net score model trained from scratch on good images; perturb with small noise, restore "
               "with the score, map = restoration error. Shows the restored image.")
    paper = "score-based-perturbation-resilience"
    produces_maps = True
    config_class = ScoreResilienceConfig
    min_train_images = 2
    snapshots = True
    export_refusal = ("its score network is a diffusers U-Net called once per noise draw and image; exporting it has not been measured to agree (it scores at about 0.4 images/s, where the backbone is not the cost)")

    config: ScoreResilienceConfig

    def __init__(self, config: ScoreResilienceConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: ScoreNet | None = None
        self._eps_cache: tuple[tuple, torch.Tensor] | None = None


    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        t0 = time.perf_counter()

        # Decode and resize once into a CPU cache at the working resolution (no augmentation, 5.3).
        cache = decode_training_cache(self.name, images, cfg.image_size, cfg.batch_size, self.min_train_images,
                                      SubProgress(progress, 0.0, 0.05, "reading"), cancel, skipped)
        data, channels, n = cache.data, cache.channels, cache.n
        if self.device.type == "cuda":
            data = data.to(self.device)  # small enough (bottle at 192 px: 70 MB)

        model = ScoreNet(cfg.shape(channels)).to(self.device)
        opt = adam(model.parameters(), decoupled=True, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        noise = torch.Generator(device=self.device).manual_seed(cfg.seed)
        bs = min(cfg.batch_size, n)

        def ema_model() -> ScoreNet:
            """5.3: the EMA weights are the ones kept (and saved)."""
            final = ScoreNet(cfg.shape(channels))
            ema.copy_to(final)
            return final.to(self.device).eval()

        loop = TrainingLoop(self.name, opt, epochs=cfg.epochs, steps_per_epoch=math.ceil(n / bs),
                            max_minutes=cfg.max_minutes, budget="step",
                            progress=SubProgress(progress, 0.05, 0.99, "training"), cancel=cancel,
                            **self._snapshots(lambda: (ema_model(), {"channels": int(channels), "n_train": int(n),
                                                                     "train_seconds": time.perf_counter() - t0 - loop.paused, "steps": loop.steps})))

        def set_lr(frac: float) -> None:
            lr = cfg.lr * (0.1 ** min(2, int(frac * 3))) if cfg.lr_schedule == "step" else cfg.lr
            for g in opt.param_groups:
                g["lr"] = lr

        crops = torch.Generator().manual_seed(cfg.seed + 2)

        def step(bidx: torch.Tensor) -> tuple[torch.Tensor, int]:
            x = random_crops(data, bidx, cfg.train_crop, crops).to(self.device, non_blocking=True)
            # 4.3 / 5.3: k ~ U(0, 1] (1 - U[0, 1)), eps ~ N(0, I).
            k = 1.0 - torch.rand(x.shape[0], generator=noise, device=self.device)
            eps = torch.randn(x.shape, generator=noise, device=self.device)
            with training_autocast(self.device, cuda=cfg.amp, cpu=cfg.amp_cpu):
                loss = dsm_loss(model, x, k, eps, cfg.sigma)
            return loss, x.shape[0]

        run = loop.run(shuffled_batches(n, bs, shuffle), step, module=model, before_step=set_lr,
                       after_step=lambda: ema.update(model))
        history, epoch, step_count, stopped_by = run.history, run.epochs_done, run.steps, run.stopped_by

        final = ema_model()
        self.model = final  # only now: a cancelled fit leaves no model behind
        self._eps_cache = None
        self.meta = {
            "channels": int(channels),
            "n_train": int(n),
            **run.record(),  # epochs_done, steps, stopped_by, loss history
            "ema_rate_final": ema.rate(),
            "fit_seconds": time.perf_counter() - t0,
            "parameters": int(sum(p.numel() for p in final.parameters())),
        }
        if progress:
            progress(1000, 1000, f"fitted: {epoch} epochs, {step_count} steps, loss {history[-1]:.4f}"
                                 f" ({stopped_by} budget reached)")

    # ------------------------------------------------------------------ score
    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The N draws ``(N, C, H, W)`` from a CPU generator seeded with ``seed`` (deterministic)."""
        key = (shape, str(self.device))
        if self._eps_cache is None or self._eps_cache[0] != key:
            gen = torch.Generator().manual_seed(self.config.seed)
            self._eps_cache = (key, torch.randn(shape, generator=gen).to(self.device))
        return self._eps_cache[1]

    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        cfg = self.config
        n_draws = cfg.n_draws
        x = to_tensor_batch(images, cfg.image_size, self.meta["channels"]).to(self.device).clamp_(0.0, 1.0)
        b = x.shape[0]
        sk = float(sigma_k(cfg.k, cfg.sigma))
        eps = self._noise((n_draws, *x.shape[1:]))  # (N, C, H, W): the same draws for every image
        k = torch.full((n_draws,), cfg.k, device=self.device)
        # Algorithm 1 / 4.4: perturb, restore in one step, error per pixel. One forward pass per
        # image (its N draws together), with the cancel / progress hook between images.
        restored_parts, raw_parts, map_parts = [], [], []
        for i in range(b):
            self._step(i, b, f"image {i + 1} of {b}")
            x_noisy = x[i:i + 1] + sk * eps
            s = self.model(x_noisy, k).float()
            restored_parts.append((x_noisy + sk * s).mean(0, keepdim=True).clamp_(0.0, 1.0))
            raw_i, map_i = error_maps(eps, s, n_draws, cfg.smooth_size)
            raw_parts.append(raw_i)
            map_parts.append(map_i)
        restored, raw, maps = torch.cat(restored_parts), torch.cat(raw_parts), torch.cat(map_parts)
        scores = maps.flatten(1).amax(1).tolist()
        raw_max = raw.flatten(1).amax(1).tolist()
        map_mean = maps.flatten(1).mean(1).tolist()
        maps_np = maps.cpu().numpy().astype(np.float32)
        rest_np = restored.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        return [
            ScoreResult(
                score=float(scores[i]),
                anomaly_map=map_to_input_lanczos(maps_np[i], img.shape),
                extras={"restored": rest_np[i]},
                columns={"map_mean": map_mean[i], "raw_max": raw_max[i]},
            )
            for i, img in enumerate(images)
        ]

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        model = ScoreNet(self.config.shape(int(meta["channels"])))
        load_module_state(model, tensors)
        self.model = model.to(self.device).eval()
        self._eps_cache = None

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
        self._eps_cache = None
