"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models")
with B(h) = e^h − 1 ("bh2"), order 2, in data prediction, as diffusers' `UniPCMultistepScheduler` runs it at its
defaults (`solver_type="bh2"`, `solver_order=2`, `predict_x0=True`, `lower_order_final=True`,
`final_sigmas_type="zero"`, no step without its corrector).

At each step the network's x̂0 at the current sample first corrects that sample (UniC, Algorithm 2: the corrector
reuses the evaluation, so it costs no call), then the predictor (UniP, Algorithm 1) moves the corrected sample to the
next level. The network's next call is at the predicted, uncorrected sample. A row's first step and the grid's last
are first order; its first step has no corrector. Each row keeps its last two x̂0, their levels, the sample its last
predictor started from and that predictor's order (`History`), so a row that enters late starts with an empty one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffusion.ddim import GridStep
from diffusion.samplers import History, Level, Sampler, column, combine, predicted_x0, stacked


def phis(s0: Level, t: Level) -> tuple[float, float, float]:
    """(h, hφ1(−h) = e^{−h} − 1, B(h)) from s0 to t, with h = λ_t − λ_s0; data prediction takes −h (UniPC eq. 5 and
    sec. 3.1; B(h) = e^{−h} − 1 for bh2, sec. 3.3)."""
    h = t.lam - s0.lam
    return h, math.expm1(-h), math.expm1(-h)


def predictor(s0: Level, t: Level, s1: Level | None) -> tuple[float, float, float]:
    """(a, b, c) of UniP-2 (Algorithm 1, with ρ = 1/2 at order 2): x_t = a·x_s0 + b·m0 + c·(m1 − m0), m1 at s1 (None:
    order 1, c = 0)."""
    h, h_phi_1, b_h = phis(s0, t)
    a = 0.0 if t.sigma == 0.0 else t.sigma / s0.sigma  # σ_t/σ_s0
    b = -t.alpha * h_phi_1  # −α_t·hφ1: the first-order term, DDIM's step
    if s1 is None:
        return a, b, 0.0
    r = (s1.lam - s0.lam) / h  # r_1 = (λ_{s1} − λ_{s0})/h
    return a, b, -t.alpha * b_h * 0.5 / r  # − α_t·B(h)·ρ_1·D_1, D_1 = (m1 − m0)/r_1, ρ_1 = 1/2


def corrector_rhos(h: float, b_h: float, r: float | None) -> tuple[float, float]:
    """(ρ for the earlier output's D_1, ρ for the new output's D) of UniC-p: p = 1 (r None): (0, 1/2); p = 2: the
    solution of R·ρ = g with R = [[1, 1], [r, 1]] and g_k = k!·φ_{k+1}(h)/B(h) (Algorithm 2, eq. 8)."""
    if r is None:
        return 0.0, 0.5
    hh = -h
    phi_2 = math.expm1(hh) / hh - 1  # hφ_2 / h: φ_k recursion, φ_{k+1} = (φ_k − 1/k!)/hh
    phi_3 = phi_2 / hh - 0.5
    g1, g2 = phi_2 / b_h, phi_3 * 2.0 / b_h
    rho_1 = (g1 - g2) / (1.0 - r)  # ρ_1 + ρ_2 = g1, r·ρ_1 + ρ_2 = g2
    return rho_1, g1 - rho_1


def corrector(s0: Level, t: Level, s1: Level | None) -> tuple[float, float, float, float]:
    """(a, b, c, d) of UniC (Algorithm 2): x^c_t = a·x_s0 + b·m0 + c·(m1 − m0) + d·(m_t − m0), with x_s0 the last
    predictor's start, m0 its output, m1 the output before (None: UniC-1) and m_t the new output at t."""
    h, h_phi_1, b_h = phis(s0, t)
    r = None if s1 is None else (s1.lam - s0.lam) / h
    rho_d1, rho_t = corrector_rhos(h, b_h, r)
    a = t.sigma / s0.sigma
    c = 0.0 if r is None else -t.alpha * b_h * rho_d1 / r
    return a, -t.alpha * h_phi_1, c, -t.alpha * b_h * rho_t


class UniPC(Sampler):
    name = "unipc"

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
        m_t = predicted_x0(x, eps, g.alpha_bar) if x0 is None else x0  # the data prediction at the current sample
        here, there = Level.of(g.alpha_bar), Level.of(g.alpha_bar_prev)
        corrected = [j for j, h in enumerate(histories) if h.last_x is not None]
        if corrected:  # UniC: rewrite the current sample with the new output, the last predictor's start and outputs
            cols, starts, m0s, m1s = [], [], [], []
            for j in corrected:
                h = histories[j]
                second = h.last_order == 2
                cols.append(corrector(h.levels[-1], here, h.levels[-2] if second else None))
                starts.append(h.last_x)
                m0s.append(h.outputs[-1])
                m1s.append(h.outputs[-2] if second else h.outputs[-1])
            sub = x[corrected]
            a, b, c, d = (column([r[i] for r in cols], sub) for i in range(4))
            m0 = stacked(m0s, sub)
            x_c = combine(stacked(starts, sub), m0, stacked(m1s, sub), a, b, c) + d * (m_t[corrected] - m0)
            x = x.clone()
            x[corrected] = x_c
        orders = [2 if h.outputs and not last else 1 for h in histories]  # UniP-1 at a row's first step and the last
        pairs = list(zip(histories, orders, strict=True))
        rows = [predictor(here, there, h.levels[-1] if p == 2 else None) for h, p in pairs]
        previous = [h.outputs[-1] if p == 2 else m_t[j] for j, (h, p) in enumerate(pairs)]
        a, b, c = (column([r[i] for r in rows], x) for i in range(3))
        x_t = combine(x, m_t, stacked(previous, x), a, b, c)
        for j, (h, p) in enumerate(pairs):
            h.push(m_t[j], here, keep=2)
            h.last_x, h.last_order = x[j].clone(), p
        return x_t, m_t
