"""Noise schedules: pure functions of continuous time t in [0, 1] -> (signal_rate, noise_rate).

Every schedule is computed in float64 and satisfies signal_rate**2 + noise_rate**2 == 1.
"""

from __future__ import annotations

import math
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
    t = _as_time(t)
    start, end = math.acos(MAX_SIGNAL_RATE), math.acos(MIN_SIGNAL_RATE)
    angle = start + t * (end - start)
    return torch.cos(angle), torch.sin(angle)


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


def get_schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
