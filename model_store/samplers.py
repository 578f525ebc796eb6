"""The samplers a request may name, torch-free: the API, the CLI and the registry read these; the arithmetic of each
is one module of `diffusion.samplers`.

- `ddim`: DDIM (Song et al. 2020), the default, with `eta`;
- `dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, second order,
  first order at its first and last steps;
- `unipc`: UniPC (Zhao et al. 2023) with B(h) = e^h − 1 ("bh2"), predictor and corrector, order 2.

The multistep samplers (`MULTISTEP`) keep earlier model outputs per row, so they take no `eta` and no RePaint
`harmonize`. Inversion runs `INVERTIBLE` ones only.
"""

from __future__ import annotations

DDIM, DPMPP_2M, UNIPC = "ddim", "dpmpp_2m", "unipc"
SAMPLERS = (DDIM, DPMPP_2M, UNIPC)
DEFAULT_SAMPLER = DDIM
MULTISTEP = frozenset({DPMPP_2M, UNIPC})  # keep a history per row: no eta, no harmonize
# POST /invert: diffusers has DDIMInverseScheduler and DPMSolverMultistepInverseScheduler
INVERTIBLE = (DDIM, DPMPP_2M)


def grid_family(sampler: str) -> str:
    """Which grid of a discrete-time model (diffusers') the sampler calls the network on: DDIMScheduler's, or the
    multistep schedulers' (DPMSolverMultistepScheduler's and UniPCMultistepScheduler's, which are the same)."""
    return "multistep" if sampler in MULTISTEP else "ddim"
