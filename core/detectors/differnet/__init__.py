from core.detectors.differnet.detector import DifferNetConfig, DifferNetDetector

__all__ = ["DifferNetConfig", "DifferNetDetector"]
