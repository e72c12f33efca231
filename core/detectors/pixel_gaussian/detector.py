"""``pixel-gaussian``: a per-pixel Gaussian model of aligned normal images.

Not from a paper: the cheap, weight-free baseline and the application's embedded default.
Each pixel of the working-resolution image has a mean and variance estimated over the
normal images; the anomaly map is the squared z-score (averaged over channels), smoothed
with a Gaussian; the image score is the smoothed map's maximum. It assumes the parts are
aligned in the frame (fixtures, a fixed camera), as on most inspection stations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.images import Skipped, iter_batches
from core.detectors.base import Detector, FitError
from core.detectors.common import expect_tensor, gaussian_blur, infer_channels, map_to_input, to_tensor_batch
from core.detectors.config import DetectorConfig
from core.detectors.runtimes import Graph
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn


class ZScoreMap(torch.nn.Module):
    """The per-pixel squared z-score averaged over channels: images (N, C, S, S) and the variance
    floor (1,) to maps (N, S, S). The network the runtimes replace (blur and maximum stay in Python)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)

    def forward(self, x: torch.Tensor, var_floor: torch.Tensor) -> torch.Tensor:
        return z_score_map(x, self.mean, self.var, var_floor)


def z_score_map(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, var_floor: torch.Tensor) -> torch.Tensor:
    return ((x - mean) ** 2 / (var + var_floor)).mean(1)


@dataclass
class PixelGaussianConfig(DetectorConfig):
    image_size: int = field(default=256, metadata={"fixed": True, "help": "working resolution (pixels a side)", "min": 8, "max": 2048})
    blur_sigma: float = field(default=4.0, metadata={"help": "Gaussian smoothing of the map (pixels at working size)", "min": 0.0, "max": 64.0})
    var_floor: float = field(default=1e-3, metadata={"help": "added to every pixel variance (intensity units^2)", "min": 1e-8, "max": 1.0, "advanced": True})


class PixelGaussianDetector(Detector):
    name = "pixel-gaussian"
    title = "Per-pixel Gaussian"
    summary = "Per-pixel mean/variance of aligned good images; squared z-score map. Fast, no weights."
    produces_maps = True
    config_class = PixelGaussianConfig
    min_train_images = 2
    self_check_default = True

    def default_calibration(self) -> tuple[str, str]:
        """``auto`` (issue 24, part 5): cross-calibrate when the held-out images could not
        support the target FPR, read a fitted tail below 1/n: cheap here (a fit is a mean and a
        variance per pixel); measured with benchmarks/calibration_fpr.py (docs/reliability.md)."""
        return "auto", "auto"

    config: PixelGaussianConfig

    def __init__(self, config: PixelGaussianConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        total = len(images)
        s1 = s2 = None
        n = 0
        channels = None
        for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
            if channels is None:
                channels = infer_channels(batch)
            x = to_tensor_batch(batch, cfg.image_size, channels).to(self.device, torch.float64)
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
            n += x.shape[0]
            if progress:
                progress(idx[-1] + 1, total, f"accumulated {n} images")
        check(cancel)
        if n < self.min_train_images:
            raise FitError(f"pixel-gaussian needs at least {self.min_train_images} readable good images, got {n}")
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0.0) * n / (n - 1)  # unbiased
        self.mean = mean.float()
        self.var = var.float()
        self.meta = {"channels": int(channels), "n_train": int(n)}

    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        cfg = self.config
        x = to_tensor_batch(images, cfg.image_size, self.meta["channels"]).to(self.device)
        floor = torch.tensor([cfg.var_floor], dtype=torch.float32, device=self.device)
        z2 = self._net("zscore", self._z2, x, floor)  # (N, H, W)
        maps = gaussian_blur(z2, cfg.blur_sigma)
        scores = maps.flatten(1).amax(1)
        maps_np = maps.cpu().numpy()
        return [
            ScoreResult(score=float(s), anomaly_map=map_to_input(m, img.shape))
            for s, m, img in zip(scores.tolist(), maps_np, images)
        ]

    def _z2(self, x: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        return z_score_map(x, self.mean, self.var, floor)

    def graphs(self, calibration: Sequence[np.ndarray] | None = None) -> list[Graph]:
        """The z-score map as a graph (images and the variance floor in, so ``--set var_floor``
        still works on an exported model); the blur and the maximum stay in Python."""
        cfg = self.config
        c, s = int(self.meta["channels"]), cfg.image_size
        example = (torch.rand((1, c, s, s), generator=torch.Generator().manual_seed(0)),
                   torch.tensor([cfg.var_floor], dtype=torch.float32))

        def batches():
            for img in calibration or []:
                yield (to_tensor_batch([img], s, c).numpy(), example[1].numpy())

        return [Graph("zscore", ZScoreMap(self.mean.cpu(), self.var.cpu()).eval(), example, ("images", "var_floor"),
                      "z2", {"images": {0: "batch"}, "z2": {0: "batch"}}, {"fixed": [s, s]},
                      batches if calibration else None,
                      info={"input": f"images (N, {c}, {s}, {s}) float32 in [0, 1], area-resized to image_size and "
                                     "var_floor (1,); output: the squared z-score averaged over channels (N, S, S), "
                                     "blurred and reduced to its maximum in Python"})]

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "var": self.var}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        channels = int(meta["channels"])
        if channels not in (1, 3):
            raise ValueError(f"meta 'channels' is {channels}, not 1 or 3")
        expect = (channels, self.config.image_size, self.config.image_size)
        # intensities are in [0, 1]: so is their mean, and their (unbiased, n >= 2) variance is at
        # most n / (n - 1) * 1/4 <= 1/2 (Popoviciu's inequality)
        mean = expect_tensor(tensors, "mean", dtype=torch.float32, shape=expect, low=0.0, high=1.0,
                             why="a mean of intensities in [0, 1]")
        var = expect_tensor(tensors, "var", dtype=torch.float32, shape=expect, low=0.0, high=0.5,
                            why="a variance of intensities in [0, 1]")
        self.mean, self.var = mean.to(self.device), var.to(self.device)

    def _moved(self) -> None:
        if self.mean is not None:
            self.mean, self.var = self.mean.to(self.device), self.var.to(self.device)
