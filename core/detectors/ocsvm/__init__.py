from core.detectors.ocsvm.detector import OCSVMConfig, OCSVMDetector

__all__ = ["OCSVMConfig", "OCSVMDetector"]
