"""KID: the unbiased MMD² under the cubic polynomial kernel, averaged over seeded random subsets."""

import numpy as np
import pytest

from diffusion.kid import KID, kid, mmd2_unbiased, polynomial_kernel


def gaussian(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def naive_mmd2(x, y):
    """Gretton et al. 2012, eq. 3, written out as double loops."""

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / len(a) + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2.0 * xy


def test_the_estimator_matches_a_double_loop_reference():
    x, y = gaussian(6, d=5, seed=1), gaussian(4, d=5, shift=0.7, seed=2)
    assert mmd2_unbiased(x, y) == pytest.approx(naive_mmd2(x.tolist(), y.tolist()), abs=1e-12, rel=0)
    assert polynomial_kernel(x, y)[2, 3] == pytest.approx((x[2] @ y[3] / 5 + 1) ** 3, abs=1e-12)


def test_samples_of_one_distribution_give_about_zero():
    result = kid(gaussian(600, seed=1), gaussian(600, seed=2), subsets=50, subset_size=200)
    assert abs(result.kid) < 0.01
    assert result.low - 0.01 < 0 < result.high + 0.01  # the interval straddles 0 or nearly does
    assert result.low <= result.kid <= result.high


def test_a_shifted_distribution_gives_a_clearly_positive_value():
    same = kid(gaussian(600, seed=1), gaussian(600, seed=2), subsets=50, subset_size=200)
    shifted = kid(gaussian(600, seed=1), gaussian(600, shift=0.5, seed=2), subsets=50, subset_size=200)
    assert shifted.low > 0.1
    assert shifted.low > 20 * abs(same.kid)


def test_it_is_reproducible_from_its_seed():
    x, y = gaussian(300, seed=1), gaussian(200, shift=0.2, seed=2)
    a, b = kid(x, y, subsets=20, subset_size=50, seed=3), kid(x, y, subsets=20, subset_size=50, seed=3)
    assert a == b
    assert kid(x, y, subsets=20, subset_size=50, seed=4) != a


def test_defaults_follow_clean_fid():
    result = kid(gaussian(150, seed=1), gaussian(140, seed=2))
    assert isinstance(result, KID)
    assert (result.subsets, result.subset_size) == (100, 140)  # min(1000, n_x, n_y) rows, 100 subsets
    assert set(result.to_json()) == {"kid", "low", "high", "subsets", "subset_size"}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same d"):
        kid(gaussian(10, d=3), gaussian(10, d=4))
    with pytest.raises(ValueError, match="subset size"):
        kid(gaussian(10), gaussian(10), subset_size=11)
    with pytest.raises(ValueError, match="two rows"):
        mmd2_unbiased(gaussian(1), gaussian(5))
