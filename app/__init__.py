"""The PySide6 front end and the command line of Anomaly Inspector."""

from core.runtime import openmp as _openmp

# before anything loads torch or faiss: their OpenMP threads read the wait policy once
_openmp.configure()
