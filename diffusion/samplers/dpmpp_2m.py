"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2): the multistep second-order solver of the diffusion ODE in data prediction (x̂0), as diffusers'
`DPMSolverMultistepScheduler` runs it at its defaults (`algorithm_type="dpmsolver++"`, `solver_order=2`,
`solver_type="midpoint"`, `lower_order_final=True`, `final_sigmas_type="zero"`).

A row's first step, and the grid's last, are first order (DPM-Solver++(1), which is DDIM at eta 0); every other step
uses the row's previous x̂0 too. Each row keeps its own previous x̂0 and level (`History`), so a row that enters
late (image-to-image) starts with an empty history, as diffusers' `set_begin_index` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffusion.ddim import GridStep
from diffusion.samplers import History, Level, Sampler, column, combine, predicted_x0, stacked


def coefficients(s0: Level, t: Level, s1: Level | None) -> tuple[float, float, float]:
    """(a, b, c) of x_t = a·x_s0 + b·m0 + c·(m1 − m0) (diffusion.samplers.combine), from the level s0 of x and
    m0 = x̂0(x_s0) to t, with m1 = x̂0 at the earlier level s1 (None: first order, c = 0)."""
    h = t.lam - s0.lam  # h_i = λ_{t_i} − λ_{t_{i−1}}
    a = 0.0 if t.sigma == 0.0 else t.sigma / s0.sigma  # σ_{t_i}/σ_{t_{i−1}}
    b = -t.alpha * math.expm1(-h)  # −α_{t_i}(e^{−h_i} − 1): DPM-Solver++(1), Algorithm 2 line 5 (DDIM at eta 0)
    if s1 is None:
        return a, b, 0.0
    r = (s0.lam - s1.lam) / h  # r_i = h_{i−1}/h_i
    # Algorithm 2, line 7: D_i = (1 + 1/(2r_i))·m0 − 1/(2r_i)·m1 = m0 − (m1 − m0)/(2r_i), so c = −b/(2r_i)
    return a, b, -b / (2.0 * r)


class DPMPP2M(Sampler):
    name = "dpmpp_2m"

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
        m0 = predicted_x0(x, eps, g.alpha_bar) if x0 is None else x0  # the data prediction x_θ(x_{t_{i−1}}, t_{i−1})
        s0, t = Level.of(g.alpha_bar), Level.of(g.alpha_bar_prev)
        rows, previous = [], []
        for j, history in enumerate(histories):
            second = bool(history.outputs) and not last  # lower order at the row's first step and the last one
            rows.append(coefficients(s0, t, history.levels[-1] if second else None))
            previous.append(history.outputs[-1] if second else m0[j])  # m1 := m0 for first order: (m0 − m1) = 0
        a, b, c = (column([r[i] for r in rows], x) for i in range(3))
        x_t = combine(x, m0, stacked(previous, x), a, b, c)  # Algorithm 2, lines 5 and 7
        for j, history in enumerate(histories):
            history.push(m0[j], s0, keep=1)
        return x_t, m0
