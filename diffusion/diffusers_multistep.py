"""The grid that diffusers' multistep schedulers (`DPMSolverMultistepScheduler`, `UniPCMultistepScheduler`, 0.42)
call a `diffusers-unet2d` or `diffusers-sd` model on, as pure functions of the resolved settings
(model_store.diffusers_kind.multistep_scheduler).

The two schedulers read a config alike: the same training alpha-bars as DDIMScheduler (float32, with
`rescale_betas_zero_snr`'s last ᾱ set to 2^−24), N + 1 points of a spacing of which the last is dropped,
σ = √((1 − ᾱ)/ᾱ) at each timestep, and a final σ of zero (`final_sigmas_type="zero"`). Step k calls the network at
timestep t_k and moves from σ_k to σ_{k+1}; as a level, ᾱ = 1/(σ² + 1) (their `_sigma_to_alpha_sigma_t`:
α = 1/√(σ² + 1), so ᾱ = α²), and the last step ends at ᾱ = 1, where the first-order step gives x̂0 itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusion import diffusers_ddim
from diffusion.ddim import GridStep


def alphas_cumprod(settings: dict) -> torch.Tensor:
    """`__init__`: alphas_cumprod = cumprod(1 − betas) in float32, the last one 2^−24 with rescale_betas_zero_snr."""
    betas = {k: settings[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    cfg = diffusers_ddim.SchedulerConfig(
        **betas,
        trained_betas=tuple(settings["trained_betas"]) if settings["trained_betas"] is not None else None,
        rescale_betas_zero_snr=settings["rescale_betas_zero_snr"],
    )
    abar = diffusers_ddim.alphas_cumprod(cfg).clone()
    if settings["rescale_betas_zero_snr"]:
        abar[-1] = 2**-24  # "Close to 0 without being 0 so first sigma is not inf"
    return abar


def grid(settings: dict, ts: Sequence[int]) -> list[GridStep]:
    """Each step's timestep (`ts`: `set_timesteps`'s, model_store.diffusers_kind.multistep_timesteps) and the levels it
    moves between: σ_k = √((1 − ᾱ_t)/ᾱ_t) read at t_k in float32 (as `set_timesteps` takes it), ᾱ = 1/(σ² + 1), and
    zero noise (ᾱ = 1) after the last step."""
    abar = alphas_cumprod(settings)
    sigmas = (((1 - abar) / abar) ** 0.5).numpy()  # float32, as `set_timesteps`
    levels = [1.0 / (float(sigmas[t]) ** 2 + 1.0) for t in ts] + [1.0]  # σ_last = 0: "zero"
    return [GridStep(float(t), levels[k], levels[k + 1]) for k, t in enumerate(ts)]
