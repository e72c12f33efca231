from core.detectors.vqvae.detector import VQVAEConfig, VQVAEDetector

__all__ = ["VQVAEConfig", "VQVAEDetector"]
