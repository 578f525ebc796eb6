"""DDIM (Song et al. 2020) as a sampler: eq. 12, one step from ᾱ to ᾱ_prev, with eta's noise (eq. 16).

The step is `diffusion.ddim.ddim_step`; it keeps no history. It reads x̂0 through the kind's clamp (`clips`: a diffusers
model's `clip_sample`, DDIMScheduler's alone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusion.ddim import GridStep, ddim_step
from diffusion.samplers import History, Sampler


class DDIM(Sampler):
    name = "ddim"
    clips = True
    multistep = False

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eta = 0.0 if etas is None else etas
        return ddim_step(x, eps, g.alpha_bar, g.alpha_bar_prev, eta, noise, x0=x0)  # eq. 12
