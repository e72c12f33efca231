from core.detectors.score_resilience.detector import ScoreResilienceConfig, ScoreResilienceDetector

__all__ = ["ScoreResilienceConfig", "ScoreResilienceDetector"]
