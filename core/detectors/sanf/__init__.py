from core.detectors.sanf.detector import SANFConfig, SANFDetector

__all__ = ["SANFConfig", "SANFDetector"]
