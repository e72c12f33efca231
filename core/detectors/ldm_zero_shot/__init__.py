from core.detectors.ldm_zero_shot.detector import LDMZeroShotConfig, LDMZeroShotDetector

__all__ = ["LDMZeroShotConfig", "LDMZeroShotDetector"]
