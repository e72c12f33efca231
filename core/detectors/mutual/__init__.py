from core.detectors.mutual.detector import MutualConfig, MutualDetector

__all__ = ["MutualConfig", "MutualDetector"]
