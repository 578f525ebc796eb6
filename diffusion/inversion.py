"""DDIM inversion: from a picture to the x_T that DDIM (eta 0) turns back into it, over the same grid.

The forward run's grid step k goes from ᾱ_k (at the network time t_k) down to ᾱ_prev_k. Its inverse goes up
from ᾱ_prev_k to ᾱ_k, steps N−1 down to 0, and the last inverse step's x is x_T.

- **Naive** inversion (Song et al. 2020, sec. 4.3; Dhariwal & Nichol 2021, eq. 13 backwards) calls the network at
  step k's time on the x that the inverse step leaves, x at ᾱ_prev_k: ε̂(x_{k+1}, t_k) stands in for ε̂(x_k, t_k).
  For a `diffusers-unet2d` model this is exactly `DDIMInverseScheduler` in the hand-written loop (`set_timesteps(N)`,
  then for each t: `eps = unet(x, t)`, `x = step(eps, t, x)`): its step at t goes from ᾱ[t − T/N] (or its initial
  ᾱ) to ᾱ[t], the forward grid's step read backwards.
- **Refined** inversion solves each inverse step for the x_k whose forward step (eq. 12, eta 0) gives back
  x_{k+1}: x_k = √ᾱ_k·x̂0 + √(1−ᾱ_k)·ε̂(x_k, t_k) with x̂0 = (x_{k+1} − √(1−ᾱ_prev_k)·ε̂(x_k, t_k))/√ᾱ_prev_k, by
  `refine` fixed-point iterations from the naive x_k (ReNoise, Garibi et al. 2024; AIDI, Pan et al. 2023). The count
  is the same for every row (a row's bits never depend on its batch); each iteration is one more network call.
- **Where it starts.** A kind whose image is the last step's x̂0 (`image_is_x0`: the Keras grid ends at t = 0,
  whose noise rate is still 0.31) has no x at the image: its first inverse step goes from the picture, as x̂0 (ᾱ = 1),
  to the x at t = 1/N, and refined, finds the x there whose x̂0 is the picture. A kind whose image is the last
  step's x (diffusers') starts from the picture as the x at the last step's ᾱ_prev.

With `guidance`, the network takes each row's condition (diffusion.guidance): a text model inverts with its
prompt at guidance 1 (the conditional row alone), since guided inversion drifts.

**DPM-Solver++(2M)** (`multistep`) inverts over the sampler's own forward grid read backwards, naively as DDIM does
(the network at step k's time on the x the step leaves), with the same solver (diffusion.samplers.dpmpp_2m) run up
the levels: first order at its first step (DDIM's inverse step, which also leaves a picture at zero noise), then second
order with the x̂0 of the step before, one level less noisy (from a start at zero noise, λ = ∞, that second-order term
vanishes, so the second step is first order too). It is not diffusers' `DPMSolverMultistepInverseScheduler`, whose
grid rises from t = 0 and which calls the network at the sample's own level. A multistep forward step reads an output
the inversion has not reached yet, so there is no fixed point to refine: `refine` applies to DDIM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from diffusion.ddim import EpsModel, GridStep, Read, Scalar
from diffusion.guidance import Guidance
from diffusion.samplers import Level, combine, predicted_x0
from diffusion.samplers.dpmpp_2m import coefficients


@dataclass(frozen=True)
class InverseStep:
    """What inversion yields after each inverse step: n in 1..steps, and x at that level (the last: x_T)."""

    step: int
    steps: int
    x: torch.Tensor  # (B, C, H, W), model space, at grid[steps - step].alpha_bar


def inverse_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar: Scalar, alpha_bar_next: Scalar, x0: torch.Tensor | None = None
) -> torch.Tensor:
    """DDIM's step (eq. 12, eta 0) from a level ᾱ up to a noisier ᾱ_next: x_next = √ᾱ_next·x̂0 + √(1−ᾱ_next)·ε̂, with
    x̂0 = (x − √(1−ᾱ)·ε̂)/√ᾱ unless `x0` is given (a kind's parameterisation, as in `ddim_step`).
    Written as DDIMInverseScheduler.step writes it (3., 5., 6.)."""
    a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    a_next = torch.as_tensor(alpha_bar_next, dtype=x.dtype, device=x.device)
    if x0 is None:
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5  # "predicted x0" of eq. 12
    return a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps  # eq. 12 without noise, at the next (higher) level


def network_calls(steps: int, refine: int) -> int:
    """Network calls per row of an inversion (per branch of a guided one)."""
    return steps * (1 + refine)


def invert(
    eps_model: EpsModel,
    grid: Sequence[GridStep],
    x_image: torch.Tensor,
    read: Read | None = None,
    image_is_x0: bool = False,
    refine: int = 0,
    guidance: Guidance | None = None,
    multistep: bool = False,
) -> Iterator[InverseStep]:
    """Invert the pictures `x_image` (B, C, H, W, model space) over `grid` (the forward run's, first step first):
    yields each inverse step's x, the last one x_T. `read` maps the network's output to (ε̂, x̂0) as the forward run
    does; `refine` fixed-point iterations per step (0: naive); `multistep`: DPM-Solver++(2M) up the levels."""
    if refine < 0:
        raise ValueError("refine must be >= 0")
    steps, x = len(grid), x_image
    rows = list(range(x.shape[0]))

    def predict(x_at: torch.Tensor, g: GridStep, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        times = torch.full((x_at.shape[0], 1, 1, 1), g.time, dtype=x_at.dtype, device=x_at.device)
        out = eps_model(x_at, times) if guidance is None else guidance(eps_model, x_at, times, rows)
        return read(out, x_at, alpha_bar) if read is not None else (out, None)

    earlier: tuple[torch.Tensor, Level] | None = None  # multistep: the last step's x̂0 and its level
    for n, k in enumerate(reversed(range(steps))):
        g = grid[k]
        low = 1.0 if image_is_x0 and k == steps - 1 else g.alpha_bar_prev  # the picture itself is x̂0: ᾱ = 1
        eps, x0 = predict(x, g, low)  # naive: ε̂ at the point the step leaves, at step k's time
        if multistep:
            m0 = predicted_x0(x, eps, low) if x0 is None else x0
            if earlier is not None and low < 1.0:  # DPM-Solver++(2M) up from ᾱ_prev_k to ᾱ_k, with the step before's x̂0
                a, b, c = (
                    torch.tensor(v, dtype=x.dtype, device=x.device)
                    for v in coefficients(Level.of(low), Level.of(g.alpha_bar), earlier[1])
                )
                x_next = combine(x, m0, earlier[0], a, b, c)
            else:  # first order: DDIM's inverse step, which also leaves the zero noise of a picture
                x_next = inverse_step(x, eps, low, g.alpha_bar, x0)
            earlier = (m0, Level.of(low))
            x = x_next
            yield InverseStep(n + 1, steps, x)
            continue
        x_next = inverse_step(x, eps, low, g.alpha_bar, x0)
        for _ in range(refine):  # x_k ← inverse(x_{k+1}, ε̂(x_k, t_k)): the forward step of x_k gives x_{k+1}
            eps, _ = predict(x_next, g, g.alpha_bar)
            x_next = inverse_step(x, eps, low, g.alpha_bar)
        x = x_next
        yield InverseStep(n + 1, steps, x)
