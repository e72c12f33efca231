"""A two-component Gaussian mixture on the score vectors (paper 4.5, Table 2: "models the
error distribution as a combination of two Gaussian distributions"): scikit-learn's
``GaussianMixture`` (full covariance, k-means initialisation, 5 restarts, seeded); each image
goes to the component of highest posterior probability."""

from __future__ import annotations

import numpy as np


def gmm_two(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, np.float64)
    # A tiny floor on the variances keeps a cluster of (near-)identical scores well defined.
    scale = float(np.var(x)) if x.size else 1.0
    gm = GaussianMixture(n_components=2, n_init=5, random_state=seed, reg_covar=max(1e-6 * scale, 1e-12))
    return gm.fit(x).predict(x).astype(np.int8)
