"""k-means with two clusters on the score vectors (paper 4.5, Table 2): scikit-learn's
``KMeans`` (k-means++ initialisation, 10 restarts, seeded)."""

from __future__ import annotations

import numpy as np


def kmeans_two(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(np.asarray(x, np.float64)).astype(np.int8)
