"""``ocsvm``: the one-class SVM baseline of the zero-shot latent-diffusion paper.

Paper (zero-shot-latent-diffusion-normalized-cut, section "One-Class SVM"): images resized to
64x64 and flattened, an RBF-kernel one-class SVM trained on normal images only. The paper
tunes kernel hyper-parameters by cross-validation on held-out normal data; with normal data
alone that selection is ill-posed (any gamma can reach any held-out FPR by moving nu), so we
expose ``nu`` and ``gamma`` as settings instead, with scikit-learn's ``gamma='scale'`` as the
default, and calibrate the decision threshold on held-out normals like every other detector.

Fitting uses scikit-learn; scoring evaluates the learned decision function
``f(x) = sum_i alpha_i exp(-gamma ||x - sv_i||^2) + b`` in torch from the saved support
vectors, so that a saved model scores identically after loading and runs on a GPU.
The image score is ``-f(x)``: higher is more anomalous. There is no anomaly map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.images import Skipped, iter_batches
from core.detectors.base import Detector, FitError
from core.detectors.common import expect_tensor, infer_channels, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress


@dataclass
class OCSVMConfig(DetectorConfig):
    image_size: int = field(default=64, metadata={"fixed": True, "help": "images are resized to this square size and flattened (paper: 64)", "min": 4, "max": 512})
    nu: float = field(default=0.1, metadata={"fixed": True, "help": "upper bound on the training outlier fraction", "min": 1e-4, "max": 1.0})
    gamma: str = field(default="scale", metadata={"fixed": True, "help": "RBF gamma: 'scale', 'auto' or a number"})

    def validate(self) -> None:
        super().validate()
        if self.gamma not in ("scale", "auto"):
            try:
                g = float(self.gamma)
            except ValueError:
                raise ConfigError(f"gamma={self.gamma!r} must be 'scale', 'auto' or a positive number") from None
            if not (math.isfinite(g) and g > 0):
                raise ConfigError(f"gamma={self.gamma!r} must be a finite positive number")


class OCSVMDetector(Detector):
    name = "ocsvm"
    title = "One-class SVM (baseline)"
    summary = "RBF one-class SVM on 64x64 flattened images (zero-shot paper's baseline). Image scores only."
    paper = "zero-shot-latent-diffusion-normalized-cut"
    produces_maps = False
    config_class = OCSVMConfig
    min_train_images = 2
    self_check_default = True
    export_refusal = ("it has no network to export: its score is a float64 RBF kernel sum over the support vectors, which OpenVINO would compute in float32 (scores near the boundary would move), and it is cheap in Python already")

    config: OCSVMConfig

    def __init__(self, config: OCSVMConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.support: torch.Tensor | None = None
        self.alpha: torch.Tensor | None = None
        self.params: torch.Tensor | None = None  # [gamma, intercept]

    def _features(self, batch: list[np.ndarray], channels: int) -> torch.Tensor:
        return to_tensor_batch(batch, self.config.image_size, channels).flatten(1)

    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        from sklearn.svm import OneClassSVM

        cfg = self.config
        total = len(images)
        feats, channels = [], None
        read = SubProgress(progress, 0.0, 0.7, "reading")
        for idx, batch in iter_batches(images, cfg.batch_size, skipped, cancel):
            if channels is None:
                channels = infer_channels(batch)
            feats.append(self._features(batch, channels))
            read(idx[-1] + 1, total)
        check(cancel)
        if not feats or sum(f.shape[0] for f in feats) < self.min_train_images:
            raise FitError(f"ocsvm needs at least {self.min_train_images} readable good images")
        X = torch.cat(feats).double().numpy()
        gamma: Any = cfg.gamma if cfg.gamma in ("scale", "auto") else float(cfg.gamma)
        if progress:
            progress(700, 1000, "fitting the SVM")
        # scikit-learn's solver cannot be interrupted; the token is checked around it.
        svm = OneClassSVM(kernel="rbf", nu=cfg.nu, gamma=gamma).fit(X)
        check(cancel)
        self.support = torch.from_numpy(svm.support_vectors_.astype(np.float64))
        self.alpha = torch.from_numpy(svm.dual_coef_[0].astype(np.float64))
        self.params = torch.tensor([float(svm._gamma), float(svm.intercept_[0])], dtype=torch.float64)
        self.meta = {"channels": int(channels), "n_train": int(X.shape[0]), "n_support": int(self.support.shape[0])}
        self._moved()
        if progress:
            progress(1000, 1000, "fitted")

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        gamma, intercept = self.params[0], self.params[1]
        # No matrix-multiply shortcut: exact distances make a score independent of its batch.
        d2 = torch.cdist(x.to(self.device, torch.float64), self.support,
                         compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        return torch.exp(-gamma * d2) @ self.alpha + intercept

    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        f = self.decision_function(self._features(images, self.meta["channels"]))
        return [ScoreResult(score=float(-v)) for v in f.cpu().tolist()]

    def _state(self) -> dict[str, torch.Tensor]:
        return {"support": self.support, "alpha": self.alpha, "params": self.params}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        dim = int(meta["channels"]) * self.config.image_size ** 2
        # the support vectors are training images' pixels (in [0, 1]); the dual coefficients of a
        # one-class SVM are in [0, 1]; the RBF kernel's gamma is positive
        support = expect_tensor(tensors, "support", dtype=torch.float64, shape=(None, dim), low=0.0, high=1.0,
                                why="pixels of training images")
        alpha = expect_tensor(tensors, "alpha", dtype=torch.float64, shape=(support.shape[0],), low=0.0, high=1.0 + 1e-6,
                              why="one-class SVM dual coefficients")
        params = expect_tensor(tensors, "params", dtype=torch.float64, shape=(2,))
        if not float(params[0]) > 0:
            raise ValueError(f"the kernel's gamma is {float(params[0]):g}, not positive")
        self.support, self.alpha, self.params = support, alpha, params
        self._moved()

    def _moved(self) -> None:
        if self.support is not None:
            self.support = self.support.to(self.device)
            self.alpha = self.alpha.to(self.device)
            self.params = self.params.to(self.device)
