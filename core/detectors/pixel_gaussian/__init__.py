from core.detectors.pixel_gaussian.detector import PixelGaussianConfig, PixelGaussianDetector

__all__ = ["PixelGaussianConfig", "PixelGaussianDetector"]
