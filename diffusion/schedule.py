"""Noise schedules: pure functions of continuous time t in [0, 1] -> (signal_rate, noise_rate).

Every schedule is computed in float64 and satisfies signal_rate**2 + noise_rate**2 == 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache

import torch

Schedule = Callable[[torch.Tensor | float], tuple[torch.Tensor, torch.Tensor]]

MAX_SIGNAL_RATE = 0.95
MIN_SIGNAL_RATE = 0.02
DISCRETE_STEPS = 1000  # T for the linear and cosine schedules


def _as_time(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def offset_cosine(t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keras DDIM example: the angle runs linearly from acos(0.95) at t=0 to acos(0.02) at t=1."""
    return _offset_cosine(t, MIN_SIGNAL_RATE, MAX_SIGNAL_RATE)


def _offset_cosine(t: torch.Tensor | float, min_signal_rate: float, max_signal_rate: float):
    t = _as_time(t)
    start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)  # Keras example: diffusion_schedule
    angle = start + t * (end - start)
    return torch.cos(angle), torch.sin(angle)


def offset_cosine_name(min_signal_rate: float, max_signal_rate: float) -> str:
    """The schedule's name for other signal rates than the example's (0.02, 0.95); the defaults are `offset_cosine`."""
    if (min_signal_rate, max_signal_rate) == (MIN_SIGNAL_RATE, MAX_SIGNAL_RATE):
        return "offset_cosine"
    if not 0 < min_signal_rate < max_signal_rate < 1:
        raise ValueError(f"signal rates must satisfy 0 < min < max < 1, got {min_signal_rate}, {max_signal_rate}")
    return f"offset_cosine(min={min_signal_rate!r},max={max_signal_rate!r})"


@cache
def _linear_alpha_bars() -> torch.Tensor:
    # Ho et al. 2020: beta_i linear from 1e-4 to 0.02; alpha_bar_i = prod_{j<=i} (1 - beta_j); alpha_bar_0 = 1.
    betas = torch.linspace(1e-4, 0.02, DISCRETE_STEPS, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])


@cache
def _cosine_alpha_bars(s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), alpha_bar = f(t)/f(0),
    # taken through betas clipped to <= 0.999 (their sec. 3.2) so that alpha_bar never reaches 0.
    steps = torch.arange(DISCRETE_STEPS + 1, dtype=torch.float64) / DISCRETE_STEPS
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])


def _discrete(alpha_bars: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Look up alpha_bar_{round(t*T)} and return (sqrt(alpha_bar), sqrt(1 - alpha_bar))."""
    index = torch.round(_as_time(t) * DISCRETE_STEPS).long().clamp(0, DISCRETE_STEPS)
    alpha_bar = alpha_bars[index]
    return torch.sqrt(alpha_bar), torch.sqrt(1.0 - alpha_bar)


def linear(t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM's linear beta schedule, 1e-4 to 0.02 over T = 1000, read at round(t*T)."""
    return _discrete(_linear_alpha_bars(), t)


def cosine(t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nichol & Dhariwal's cosine schedule (s = 0.008, beta <= 0.999), read at round(t*T)."""
    return _discrete(_cosine_alpha_bars(), t)


SCHEDULES: dict[str, Schedule] = {"offset_cosine": offset_cosine, "cosine": cosine, "linear": linear}


OFFSET_COSINE_RATES = re.compile(r"offset_cosine\(min=([0-9.e+-]+),max=([0-9.e+-]+)\)")


def get_schedule(name: str) -> Schedule:
    rates = OFFSET_COSINE_RATES.fullmatch(name)
    if rates:  # an imported Keras model trained with other signal rates (offset_cosine_name)
        low, high = float(rates[1]), float(rates[2])
        offset_cosine_name(low, high)  # validates
        return lambda t: _offset_cosine(t, low, high)
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
