from core.detectors.patchcore.detector import PatchCoreConfig, PatchCoreDetector

__all__ = ["PatchCoreConfig", "PatchCoreDetector"]
