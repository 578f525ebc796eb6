"""Kernel Inception Distance (Bińkowski et al. 2018), as in the Keras DDIM example and clean-fid.

KID is the squared MMD between two feature sets under the cubic polynomial kernel
k(x, y) = (x·y / d + 1)^3, estimated without bias on random subsets and averaged over them.
A percentile bootstrap over the subset estimates gives a 95% interval for that mean.
Everything is float64 numpy with a seeded generator, so a figure is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SUBSET_SIZE = 1000  # clean-fid's defaults
NUM_SUBSETS = 100
BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class KID:
    kid: float  # mean of the subset estimates
    low: float  # percentile-bootstrap interval of that mean
    high: float
    subsets: int
    subset_size: int

    def to_json(self) -> dict:
        return {
            "kid": self.kid,
            "low": self.low,
            "high": self.high,
            "subsets": self.subsets,
            "subset_size": self.subset_size,
        }


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)^3 for every pair of rows: (n, d), (m, d) -> (n, m)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD²: mean off-diagonal k(x, x') + mean off-diagonal k(y, y') − 2 · mean k(x, y).

    Gretton et al. 2012, eq. 3 (MMD²_u); both sets need at least two rows.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD² needs at least two rows in each set (got {n} and {m})")
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    xy = polynomial_kernel(x, y).mean()
    return float(xx + yy - 2.0 * xy)


def bootstrap_interval(
    values: np.ndarray, rng: np.random.Generator, resamples: int = BOOTSTRAP, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (Efron & Tibshirani 1993, ch. 13)."""
    values = np.asarray(values, dtype=np.float64)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def kid(
    x: np.ndarray,
    y: np.ndarray,
    subsets: int = NUM_SUBSETS,
    subset_size: int | None = None,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP,
) -> KID:
    """KID between feature sets x (n, d) and y (m, d): mean MMD²_u over random subsets, with a 95% interval.

    Each subset draws `subset_size` rows of x and of y without replacement (default min(1000, n, m)),
    as clean-fid's `kernel_distance` does.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d) with the same d (got {x.shape} and {y.shape})")
    size = min(MAX_SUBSET_SIZE, len(x), len(y)) if subset_size is None else subset_size
    if not 2 <= size <= min(len(x), len(y)):
        raise ValueError(f"subset size {size} must be in 2..{min(len(x), len(y))}")
    if subsets < 1:
        raise ValueError("subsets must be >= 1")
    rng = np.random.default_rng(seed)
    estimates = np.array(
        [
            mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
            for _ in range(subsets)
        ]
    )
    low, high = bootstrap_interval(estimates, rng, bootstrap)
    return KID(float(estimates.mean()), low, high, subsets, size)
