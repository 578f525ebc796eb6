"""DDIM exactly as diffusers' `DDIMScheduler` (0.42) runs it, as pure functions: the discrete grid of a
`diffusers-unet2d` model and the reading of its network's output.

The step itself stays `diffusion.ddim.ddim_step` (DDIM paper, eq. 12): this module only says which
alpha-bars a step moves between, what the network is called with, and which x̂0 and ε̂ the step gets.
Each line names the DDIM paper's equation or the line of `DDIMScheduler` (`__init__`, `set_timesteps`,
`step`) that it mirrors. The alpha-bars are computed in float32 with the same torch operations as
`DDIMScheduler.__init__`, so that they are its values bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffusion.ddim import GridStep

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SchedulerConfig:
    """The DDIMScheduler settings that decide a run (thresholding is refused at import, so it is not here)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.trained_betas is None and self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r} is not one of {', '.join(SPACINGS)}")
        if self.num_train_timesteps < 1:
            raise ValueError("num_train_timesteps must be >= 1")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(f"{len(self.trained_betas)} trained_betas for {self.num_train_timesteps} timesteps")

    @classmethod
    def from_dict(cls, data: dict) -> SchedulerConfig:
        """From the stored (complete) scheduler settings; unknown keys are an error here (the importer drops them)."""
        fields = dict(data)
        if fields.get("trained_betas") is not None:
            fields["trained_betas"] = tuple(float(b) for b in fields["trained_betas"])
        return cls(**fields)

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["trained_betas"] = list(self.trained_betas) if self.trained_betas is not None else None
        return data


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The "squaredcos_cap_v2" betas (Nichol & Dhariwal 2021, eq. 17), as diffusers' `betas_for_alpha_bar`."""

    def alpha_bar_fn(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # s = 0.008

    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))  # beta_t = 1 - abar(t2)/abar(t1), capped
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))  # shift to 0 at T, keep the value at 1
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])  # revert the cumprod
    return 1 - alphas


def betas(cfg: SchedulerConfig) -> torch.Tensor:
    """DDIMScheduler.__init__: the betas of the training schedule, float32."""
    if cfg.trained_betas is not None:
        b = torch.tensor(cfg.trained_betas, dtype=torch.float32)  # "trained_betas"
    elif cfg.beta_schedule == "linear":
        b = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        b = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float32) ** 2
    else:
        b = betas_for_alpha_bar(cfg.num_train_timesteps)  # "squaredcos_cap_v2"
    return rescale_zero_terminal_snr(b) if cfg.rescale_betas_zero_snr else b


def alphas_cumprod(cfg: SchedulerConfig) -> torch.Tensor:
    """DDIMScheduler.__init__: `alphas_cumprod = cumprod(1 - betas)`, float32: ᾱ_t for t = 0..T-1."""
    return torch.cumprod(1.0 - betas(cfg), dim=0)


def final_alpha_cumprod(cfg: SchedulerConfig, abar: torch.Tensor) -> float:
    """DDIMScheduler.__init__: ᾱ after the last step, 1 with `set_alpha_to_one`, else ᾱ_0."""
    return 1.0 if cfg.set_alpha_to_one else float(abar[0])


def timesteps(cfg: SchedulerConfig, steps: int) -> list[int]:
    """DDIMScheduler.set_timesteps: the N discrete timesteps of a run, first (noisiest) to last."""
    T = cfg.num_train_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (num_train_timesteps) for this model, got {steps}")
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].copy().astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64)
        ts += cfg.steps_offset  # "leading" is the only spacing that adds steps_offset
    else:  # "trailing"
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)
        ts -= 1
    out = [int(t) for t in ts]
    if len(out) != steps or not all(0 <= t < T for t in out):
        raise ValueError(f"{steps} steps give timesteps outside 0..{T - 1} with this scheduler ({out[:3]}…)")
    return out


def prev_timestep(cfg: SchedulerConfig, t: int, steps: int) -> int:
    """DDIMScheduler.step, 1.: `prev_timestep = timestep - num_train_timesteps // num_inference_steps`, whatever the
    spacing."""
    return t - cfg.num_train_timesteps // steps


def grid(cfg: SchedulerConfig, steps: int) -> list[GridStep]:
    """Each step's network time (the discrete timestep t) and the alpha-bars it moves between."""
    abar = alphas_cumprod(cfg)
    final = final_alpha_cumprod(cfg, abar)
    out = []
    for t in timesteps(cfg, steps):
        prev = prev_timestep(cfg, t, steps)
        a_t = float(abar[t])  # step, 2.: alpha_prod_t = alphas_cumprod[timestep]
        a_prev = float(abar[prev]) if prev >= 0 else final  # step, 2.: ... if prev_timestep >= 0 else final
        out.append(GridStep(float(t), a_t, a_prev))
    return out


def read(
    prediction_type: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, clip_range: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂0) for the DDIM step from the network's output (DDIMScheduler.step, 3. and 4.).

    x̂0 is clamped to ±`clip_range` when given (`clip_sample`), but ε̂ stays the unclipped one: the pipeline
    passes no `use_clipped_model_output`, so step 6.'s direction term uses the model's ε̂."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float32)
    b = 1 - a  # step, 2.: beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (x_t - b**0.5 * out) / a**0.5  # step, 3.: "predicted x_0" of eq. 12
        eps = out
    elif prediction_type == "sample":
        x0 = out
        eps = (x_t - a**0.5 * x0) / b**0.5  # step, 3.: eq. 12 solved for ε
    elif prediction_type == "v_prediction":
        x0 = a**0.5 * x_t - b**0.5 * out  # step, 3.: Salimans & Ho 2022, v = √ᾱ ε − √(1−ᾱ) x0
        eps = a**0.5 * out + b**0.5 * x_t
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)  # step, 4.: clip "predicted x_0"; eps is not re-derived
    return eps, x0


def clip_range(cfg: SchedulerConfig) -> float | None:
    """The clamp of x̂0, or None without `clip_sample`."""
    return float(cfg.clip_sample_range) if cfg.clip_sample else None
