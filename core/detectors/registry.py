"""The explicit detector registry: one line per detector, looked up by name."""

from __future__ import annotations

import os
from typing import Any

import torch

from core.detectors.base import Detector
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.differnet import DifferNetDetector
from core.detectors.ldm_zero_shot import LDMZeroShotDetector
from core.detectors.mutual import MutualDetector
from core.detectors.ocsvm import OCSVMDetector
from core.detectors.patchcore import PatchCoreDetector
from core.detectors.pixel_gaussian import PixelGaussianDetector
from core.detectors.sanf import SANFDetector
from core.detectors.score_resilience import ScoreResilienceDetector
from core.detectors.vqvae import VQVAEDetector
from core.io.checkpoint import CheckpointError, read_header

REGISTRY: dict[str, type[Detector]] = {
    PixelGaussianDetector.name: PixelGaussianDetector,
    OCSVMDetector.name: OCSVMDetector,
    ScoreResilienceDetector.name: ScoreResilienceDetector,
    VQVAEDetector.name: VQVAEDetector,
    DifferNetDetector.name: DifferNetDetector,
    MutualDetector.name: MutualDetector,
    LDMZeroShotDetector.name: LDMZeroShotDetector,
    SANFDetector.name: SANFDetector,
    PatchCoreDetector.name: PatchCoreDetector,
}

#: The no-weights fallback: it needs nothing but the good images.
FALLBACK_DETECTOR = PixelGaussianDetector.name


def default_detector() -> str:
    """The GUI's and the demo's default: ``patchcore`` when its backbone weights are found
    (they are a dependency), else the no-weights fallback ``pixel-gaussian``."""
    return PatchCoreDetector.name if PatchCoreDetector.availability()[0] else FALLBACK_DETECTOR


def default_zero_shot_detector() -> str:
    """The zero-shot detector offered first (listed before ``ldm-zero-shot``; named by ``scan``):
    ``mutual``, measured better on both of the zero-shot paper's batches (docs/benchmarks.md,
    "mutual"), when its backbone weights are found (they are a dependency); else ``ldm-zero-shot``."""
    return MutualDetector.name if MutualDetector.availability()[0] else LDMZeroShotDetector.name


class UnknownDetectorError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def detector_names() -> list[str]:
    return list(REGISTRY)


def get_detector_class(name: str) -> type[Detector]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDetectorError(f"unknown detector '{name}' (known: {', '.join(REGISTRY)})") from None


def make_config(name: str, overrides: dict[str, Any] | None = None) -> DetectorConfig:
    cls = get_detector_class(name)
    cfg = cls.config_class()
    return cfg.with_overrides(overrides) if overrides else cfg


def create_detector(name: str, overrides: dict[str, Any] | None = None, device: str | torch.device = "auto") -> Detector:
    cls = get_detector_class(name)
    available, reason = cls.availability()
    if not available:
        raise ConfigError(f"detector '{name}' is unavailable here: {reason}")
    return cls(make_config(name, overrides), device=device)


def load_model(folder: str | os.PathLike, device: str | torch.device = "auto") -> Detector:
    """Load any saved model, dispatching on the detector name recorded in it. An exported folder
    (``export-model``) loads on the runtime it was exported for, on the CPU, at that runtime's
    default precision (:func:`core.detectors.exporting.load_exported`)."""
    from core.io.exported import is_exported

    if is_exported(folder):
        from core.detectors.exporting import load_exported

        return load_exported(folder, device="cpu" if str(device) == "auto" else device)
    header = read_header(folder)
    name = header["detector"]
    if name not in REGISTRY:
        raise CheckpointError(f"{folder} holds a model of detector '{name}', which this version does not know")
    return REGISTRY[name].load(folder, device=device)
