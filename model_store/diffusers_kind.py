"""Kind `diffusers-unet2d`, torch-free: its image shape, its per-model step bound and its scheduler settings.

A diffusers pipeline's scheduler config is read the way `DDIMPipeline` reads it, through
`DDIMScheduler.from_config`: the keys `DDIMScheduler.__init__` takes, each missing one at its default,
and every other key ignored. Of the keys it takes, those that change DDIM in a way this service does not
implement (`thresholding: true`) are refused. The stored settings (`model.json`'s `scheduler`) are the
complete, resolved set that decides a run.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

from model_store.errors import ModelStoreError

if TYPE_CHECKING:
    from model_store.manifest import Manifest

KIND = "diffusers-unet2d"

# DDIMScheduler.__init__'s arguments and defaults (diffusers 0.42): what `from_config` fills in.
DDIM_DEFAULTS: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}
# Taken by DDIMScheduler but inert once `thresholding` is false (refused otherwise): not stored.
INERT = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")
SUPPORTED = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
}


def ddim_scheduler(config: dict, where: str = "scheduler config") -> tuple[dict, list[str]]:
    """(the resolved DDIM settings to store, the keys ignored as `from_config` ignores them); a one-line error
    for a setting that changes DDIM in a way not implemented, or a value DDIMScheduler does not know."""
    if config.get("thresholding"):
        raise ModelStoreError(f"{where}: `thresholding: true` (dynamic thresholding) is not supported")
    ignored = sorted(k for k in config if k not in DDIM_DEFAULTS and not k.startswith("_"))
    resolved = {k: config.get(k, default) for k, default in DDIM_DEFAULTS.items() if k not in INERT}
    for key, allowed in SUPPORTED.items():
        if key == "beta_schedule" and resolved["trained_betas"] is not None:
            continue
        if resolved[key] not in allowed:
            raise ModelStoreError(
                f"{where}: {key} {resolved[key]!r} is not supported (supported: {', '.join(allowed)})"
            )
    T = resolved["num_train_timesteps"]
    if not isinstance(T, int) or T < 1:
        raise ModelStoreError(f"{where}: num_train_timesteps must be a positive integer, got {T!r}")
    betas = resolved["trained_betas"]
    if betas is not None:
        if not isinstance(betas, list) or len(betas) != T:
            raise ModelStoreError(f"{where}: trained_betas must be a list of num_train_timesteps ({T}) numbers")
        resolved["trained_betas"] = [float(b) for b in betas]
    for key in ("beta_start", "beta_end", "clip_sample_range"):
        resolved[key] = float(resolved[key])
    for key in ("clip_sample", "set_alpha_to_one", "rescale_betas_zero_snr"):
        resolved[key] = bool(resolved[key])
    resolved["steps_offset"] = int(resolved["steps_offset"])
    return resolved, ignored


def shape(config: dict) -> tuple[int, int, int]:
    """(height, width, channels) of a UNet2DModel config: `sample_size` is a side or [height, width]."""
    size = config.get("sample_size")
    if isinstance(size, int):
        height = width = size
    elif isinstance(size, list | tuple) and len(size) == 2:
        height, width = int(size[0]), int(size[1])
    else:
        raise ModelStoreError(f"sample_size {size!r} is neither an integer nor [height, width]")
    return height, width, int(config.get("in_channels", 3))


def max_steps(scheduler: dict) -> int:
    """The most steps the model runs: its num_train_timesteps (DDIMScheduler.set_timesteps refuses more), less
    where a leading grid's `steps_offset` would put the first timestep at T or beyond."""
    T = int(scheduler["num_train_timesteps"])
    offset = int(scheduler.get("steps_offset", 0)) if scheduler.get("timestep_spacing") == "leading" else 0
    n = T
    while n > 1 and (n - 1) * (T // n) + offset >= T:
        n -= 1
    return n


def steps_limit(extras: dict) -> int:
    """The step bound of a stored model, from its manifest's `scheduler` (model_store.kinds.Kind.limit)."""
    return max_steps(extras["scheduler"])


# DPMSolverMultistepScheduler.__init__'s and UniPCMultistepScheduler.__init__'s defaults (diffusers 0.42) for the keys
# that describe the model and its grid: the two read them alike, so both samplers call the network on one grid.
MULTISTEP_DEFAULTS: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
# Keys that would change the multistep grid or the reading of the output in a way not implemented: refused when set
# to anything but the value shown (their defaults).
MULTISTEP_UNSUPPORTED: dict = {
    "thresholding": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
    "final_sigmas_type": "zero",
}
LEARNED_VARIANCE = ("learned", "learned_range")  # DPMSolverMultistepScheduler then reads the first channels only


def multistep_scheduler(config: dict, where: str = "scheduler config") -> dict:
    """The settings that DPMSolverMultistepScheduler.from_config(config) and UniPCMultistepScheduler.from_config(config)
    run a model with, as far as they decide its grid and its output: each missing key at its default. The keys that
    define a solver (`algorithm_type`, `solver_order`, `solver_type`, `lower_order_final`, ...) are the sampler's, not
    the model's: the sampler a request names runs at its own definition (model_store.samplers). A one-line error for a
    setting not implemented (Karras or other sigma spacings, thresholding, learned variance, a clipped lambda)."""
    for key, default in MULTISTEP_UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise ModelStoreError(f"{where}: {key} {config[key]!r} is not supported by the multistep samplers")
    if config.get("variance_type") in LEARNED_VARIANCE:
        raise ModelStoreError(
            f"{where}: variance_type {config['variance_type']!r} is not supported by the multistep samplers"
        )
    clipped = config.get("lambda_min_clipped", float("-inf"))
    if clipped is not None and float(clipped) != float("-inf"):
        raise ModelStoreError(f"{where}: lambda_min_clipped {clipped!r} is not supported by the multistep samplers")
    resolved = {k: config.get(k, default) for k, default in MULTISTEP_DEFAULTS.items()}
    for key, allowed in SUPPORTED.items():
        if key == "beta_schedule" and resolved["trained_betas"] is not None:
            continue
        if resolved[key] not in allowed:
            supported = ", ".join(allowed)
            raise ModelStoreError(f"{where}: {key} {resolved[key]!r} is not supported (supported: {supported})")
    T = resolved["num_train_timesteps"]
    if not isinstance(T, int) or T < 2:
        raise ModelStoreError(f"{where}: num_train_timesteps must be an integer >= 2, got {T!r}")
    if resolved["trained_betas"] is not None:
        resolved["trained_betas"] = [float(b) for b in resolved["trained_betas"]]
    resolved["beta_start"], resolved["beta_end"] = float(resolved["beta_start"]), float(resolved["beta_end"])
    resolved["steps_offset"] = int(resolved["steps_offset"])
    resolved["rescale_betas_zero_snr"] = bool(resolved["rescale_betas_zero_snr"])
    return resolved


def multistep_timesteps(settings: dict, steps: int) -> list[int]:
    """DPMSolverMultistepScheduler.set_timesteps(steps) (UniPCMultistepScheduler's is the same) for the resolved
    settings (`multistep_scheduler`): N + 1 points of the spacing, noisiest first, the last one dropped; no lambda
    clipping (`lambda_min_clipped` is −∞). A ValueError for a count whose timesteps repeat or leave 0..T−1."""
    import numpy as np

    T = settings["num_train_timesteps"]
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (num_train_timesteps) for this model, got {steps}")
    spacing = settings["timestep_spacing"]
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        ts += settings["steps_offset"]
    else:  # "trailing"
        ts = np.arange(T, 0, -T / steps).round().copy().astype(np.int64)
        ts -= 1
    out = [int(t) for t in ts]
    if len(out) != steps or not all(0 <= t < T for t in out) or any(a <= b for a, b in pairwise(out)):
        raise ValueError(f"{steps} steps give timesteps that repeat or leave 0..{T - 1} with this scheduler")
    return out


def multistep_max_steps(settings: dict) -> int:
    """The most steps the multistep samplers run: the largest count whose timesteps are distinct and within 0..T−1
    (a step between two equal timesteps would divide by h = 0)."""
    n = int(settings["num_train_timesteps"])
    while n > 1:
        try:
            multistep_timesteps(settings, n)
            return n
        except ValueError:
            n -= 1
    return 1


def sampler_steps(manifest: Manifest, sampler: str) -> int | None:
    """The step bound of a multistep sampler on a stored model (model_store.kinds.Kind.steps_bound); None for DDIM,
    whose bound is `steps_limit`'s, or a model that cannot run it (refused on its own)."""
    from model_store.samplers import grid_family

    if grid_family(sampler) == "ddim" or sampler_refusal(manifest, sampler) is not None:
        return None
    return multistep_max_steps(multistep_scheduler(manifest.extras["scheduler_config"]))


REIMPORT = "re-import it (diffusetv import diffusers) to keep its scheduler config, which the multistep samplers read"


def sampler_refusal(manifest: Manifest, sampler: str) -> str | None:
    """Why a stored diffusers model cannot run `sampler`, in one line; None when it can. DDIM always runs; the
    multistep samplers read the pipeline's original scheduler config, which models imported before it was kept lack."""
    from model_store.samplers import MULTISTEP

    extras, ref = manifest.extras, manifest.ref
    if sampler not in MULTISTEP:
        return None
    if "scheduler_config" not in extras:
        return f"{ref} was imported without its original scheduler config: {REIMPORT}"
    try:
        multistep_scheduler(extras["scheduler_config"], f"{ref}'s scheduler config")
    except ModelStoreError as exc:
        return str(exc)
    return None
