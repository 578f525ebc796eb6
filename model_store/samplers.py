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


def refusal(sampler: str, eta: float = 0.0, harmonize: int = 0, inverting: bool = False) -> tuple[str, str] | None:
    """(the request field to name, why) for options that do not go with `sampler`, whatever the model: eta or
    harmonize with a multistep sampler, or an inversion by one that does not invert; None when they go together. The
    API (422s) and the CLI (one-line errors) both ask this."""
    if sampler not in SAMPLERS:
        return "sampler", f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}"
    if sampler in MULTISTEP and eta > 0:
        return "eta", f"eta is DDIM's alone: sampler {sampler!r} takes eta 0"
    if sampler in MULTISTEP and harmonize:
        msg = f"harmonize is DDIM's alone: sampler {sampler!r} keeps a history per row and takes harmonize 0"
        return "harmonize", msg
    if inverting and sampler not in INVERTIBLE:
        return "sampler", f"{sampler!r} does not invert: use one of {', '.join(INVERTIBLE)}"
    return None
