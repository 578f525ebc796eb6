"""Samplers: how a run moves its rows from one grid level to the next, one module each behind one interface (as
k-diffusion's samplers share one signature).

A run (diffusion.ddim.DDIMRun) calls the network once per step on its rows, reads each row's ε̂ and x̂0 (the kind's
parameterisation), then hands each group of rows of one sampler to `Sampler.step`, with each row's own `History`.
The arithmetic is pure: functions of tensors and the grid's levels. Every coefficient is computed per row, in float64
from its levels, and applied elementwise, so a row's bits never depend on the rows beside it, and a row can leave
between steps (`DDIMRun.drop`) without changing the others.

- `ddim` (diffusion.samplers.ddim): DDIM, eq. 12, with `eta`;
- `dpmpp_2m` (diffusion.samplers.dpmpp_2m): DPM-Solver++(2M), Lu et al. 2022;
- `unipc` (diffusion.samplers.unipc): UniPC-bh2, Zhao et al. 2023.

**Levels.** A grid step moves from ᾱ (`GridStep.alpha_bar`, where the network is called) to ᾱ_prev. The multistep
samplers work in α = √ᾱ, σ = √(1 − ᾱ) and λ = log(α/σ) (the half log-SNR, DPM-Solver's λ_t); ᾱ = 1 (σ = 0, λ = ∞)
is a level of zero noise, where the first-order step gives x̂0 itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from diffusion.ddim import GridStep


@dataclass(frozen=True)
class Level:
    """A noise level: α = √ᾱ, σ = √(1 − ᾱ), λ = log α − log σ (DPM-Solver, Lu et al. 2022a, sec. 3.1), float64."""

    alpha: float
    sigma: float
    lam: float

    @classmethod
    def of(cls, alpha_bar: float) -> Level:
        a = float(alpha_bar)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"a level's alpha-bar must be in (0, 1], got {a}")
        alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
        lam = math.inf if sigma == 0.0 else math.log(alpha) - math.log(sigma)  # λ_t = log(α_t / σ_t)
        return cls(alpha, sigma, lam)


@dataclass
class History:
    """One row's solver state: its earlier model outputs (x̂0, newest last) with the level each was evaluated at, and
    for UniPC the sample its last predictor started from and that predictor's order."""

    outputs: list[torch.Tensor] = field(default_factory=list)  # (C, H, W) x̂0 of earlier steps, at most `keep`
    levels: list[Level] = field(default_factory=list)
    last_x: torch.Tensor | None = None  # UniPC: x_{t_{i-1}} after its corrector, the start of its last predictor
    last_order: int = 0

    def push(self, output: torch.Tensor, level: Level, keep: int) -> None:
        self.outputs = [*self.outputs, output.clone()][-keep:]
        self.levels = [*self.levels, level][-keep:]


def column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-row coefficients (float64 numbers) as a (B, 1, ..., 1) tensor of `like`'s dtype and device."""
    shape = (len(values), *([1] * (like.dim() - 1)))
    return torch.tensor(list(values), dtype=torch.float64).to(dtype=like.dtype, device=like.device).reshape(shape)


def stacked(tensors: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack([t.to(device=like.device, dtype=like.dtype) for t in tensors])


class Sampler(ABC):
    """A sampler's update of its rows after the network's call at a grid step.

    `step(x, eps, x0, g, last, histories, etas, noise)`: x (B, C, H, W) the rows at ᾱ = g.alpha_bar, eps and x0 the
    network's reading there (x0 derived from eps when the kind gives none), `last` whether it is the grid's last step,
    `histories` each row's state (updated in place), and for DDIM each row's eta and eta noise. Returns (x at
    g.alpha_bar_prev, x̂0)."""

    name: ClassVar[str]
    clips: ClassVar[bool] = False  # whether it reads x̂0 through the kind's clamp (DDIMScheduler's clip_sample)
    multistep: ClassVar[bool] = True  # keeps earlier outputs per row: no eta, no RePaint re-steps

    @abstractmethod
    def step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        x0: torch.Tensor | None,
        g: GridStep,
        last: bool,
        histories: Sequence[History],
        etas: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def combine(
    x: torch.Tensor, m0: torch.Tensor, m1: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """a·x + b·m0 + c·(m1 − m0), per-row (B, 1, ..., 1) a, b, c: the shape of every multistep update here, with m0 the
    newest x̂0 and m1 an earlier one (DPM-Solver++(2M)'s step, UniP's, and the first part of UniC's)."""
    return a * x + b * m0 + c * (m1 - m0)


def predicted_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x̂0 = (x − √(1−ᾱ)·ε̂)/√ᾱ (DDIM paper, eq. 12's "predicted x0"), written as diffusion.ddim.ddim_step writes it."""
    a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    return (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)


def get(name: str) -> Sampler:
    """The sampler called `name` (model_store.samplers.SAMPLERS)."""
    from diffusion.samplers.ddim import DDIM
    from diffusion.samplers.dpmpp_2m import DPMPP2M
    from diffusion.samplers.unipc import UniPC

    found = {s.name: s for s in (DDIM, DPMPP2M, UniPC)}
    try:
        return found[name]()
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(found)}") from None
