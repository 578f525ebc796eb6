import math

import numpy as np
import pytest
import torch

from diffusion.schedule import SCHEDULES, cosine, get_schedule, linear, offset_cosine

T = torch.linspace(0, 1, 2001, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_rates_are_unit_norm_float64_and_monotone(name):
    signal, noise = SCHEDULES[name](T)
    assert signal.dtype == noise.dtype == torch.float64
    assert torch.max(torch.abs(signal**2 + noise**2 - 1)).item() <= 1e-12
    assert torch.all(signal[1:] <= signal[:-1]), "signal rate must not grow with t"
    assert torch.all(noise[1:] >= noise[:-1])
    assert signal[0] > signal[-1], "the schedule must move"


def test_offset_cosine_end_points():
    signal, _noise = offset_cosine(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert abs(signal[0].item() - 0.95) <= 1e-12
    assert abs(signal[1].item() - 0.02) <= 1e-12
    mid_angle = (math.acos(0.95) + math.acos(0.02)) / 2  # the angle is linear in t
    assert abs(offset_cosine(0.5)[0].item() - math.cos(mid_angle)) <= 1e-12


def test_linear_alpha_bar_at_one_is_the_product_of_one_minus_beta():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    expected = float(np.prod(1.0 - betas))
    signal, _ = linear(1.0)
    assert abs(signal.item() ** 2 - expected) <= 1e-12 * max(1.0, expected) + 1e-15
    assert linear(0.0)[0].item() == 1.0  # alpha_bar_0 = 1
    # t reads alpha_bar_{round(t * T)}: t = 0.5 is step 500
    assert abs(linear(0.5)[0].item() ** 2 - float(np.prod(1.0 - betas[:500]))) <= 1e-12


def test_cosine_never_reaches_zero_and_matches_nichol_dhariwal():
    signal, _ = cosine(T)
    assert torch.all(signal**2 > 0)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # Early on no beta is clipped, so alpha_bar(t) = f(t) / f(0) exactly.
    assert abs(cosine(0.3)[0].item() ** 2 - f(0.3) / f(0)) <= 1e-12
    assert cosine(1.0)[0].item() ** 2 < 1e-4


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("quadratic")
