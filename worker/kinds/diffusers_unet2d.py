"""Kind `diffusers-unet2d`: diffusers' own `UNet2DModel`, run on DDIMScheduler's discrete grid.

The network is diffusers' class, built from the stored UNet config and the store's verified fp32
safetensors (diffusers is imported only when such a model is loaded, and never reaches a hub). The grid,
the parameterisation (`epsilon`, `v_prediction`, `sample`, with `clip_sample`) and the image (the last
step's x_prev, as `DDIMPipeline` returns it) follow DDIMScheduler (diffusion.diffusers_ddim); the step is
the shared DDIM step (diffusion.ddim, eq. 12). Pixels: [-1, 1] -> (x/2 + 0.5), clamped, round(x·255).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from diffusion import diffusers_ddim, diffusers_multistep
from diffusion.ddim import GridStep, Step
from diffusion.denoiser import denormalised_pixels, normalised_pixels
from diffusion.diffusers_unet import UNet2DNetwork, unet2d
from model_store import ModelStoreError
from model_store.diffusers_kind import KIND, multistep_scheduler, multistep_timesteps, sampler_refusal
from model_store.samplers import grid_family
from model_store.weights import read_state
from worker.kinds import KindModel


class DiffusersUNet2D(KindModel):
    def __init__(self, manifest) -> None:
        super().__init__(manifest)
        self.scheduler = diffusers_ddim.SchedulerConfig.from_dict(manifest.extras["scheduler"])
        self.clip = diffusers_ddim.clip_range(self.scheduler)

    def network(self, device: str) -> nn.Module:
        state = read_state(self.manifest, KIND)
        try:
            unet = unet2d(self.manifest.config)
        except ImportError as exc:
            raise ModelStoreError(f"{self.manifest.ref}: {exc}") from None
        try:
            unet.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelStoreError(f"{self.manifest.weights_path}: weights do not fit the config ({exc})") from None
        return UNet2DNetwork(unet).to(device).eval()

    def grid(self, steps: int, sampler: str = "ddim") -> list[GridStep]:
        """DDIMScheduler's grid for DDIM; the multistep schedulers' for the others, from the pipeline's original
        scheduler config (diffusion.diffusers_multistep)."""
        if grid_family(sampler) == "ddim":
            return diffusers_ddim.grid(self.scheduler, steps)
        refusal = sampler_refusal(self.manifest, sampler)
        if refusal is not None:
            raise ModelStoreError(refusal)
        settings = multistep_scheduler(self.manifest.extras["scheduler_config"])
        return diffusers_multistep.grid(settings, multistep_timesteps(settings, steps))

    def grid_key(self, sampler: str) -> str:
        return grid_family(sampler)  # DDIM's timesteps and the multistep ones differ, even at equal steps

    def read(self, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return diffusers_ddim.read(self.scheduler.prediction_type, out, x_t, alpha_bar, None)  # DDIM clamps (`clip`)

    def final(self, step: Step) -> torch.Tensor:
        return step.x  # DDIMPipeline's image is the last step's prev_sample

    @property
    def image_is_x0(self) -> bool:
        return False  # the image is the last step's x (at its ᾱ_prev): inversion starts from it

    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        channels = x0.shape[1]
        return denormalised_pixels(x0, [0.5] * channels, [0.5] * channels)  # (x/2 + 0.5).clamp(0, 1), round(·255)

    def to_model(self, pixels: np.ndarray, gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        channels = pixels.shape[-1]
        return normalised_pixels(pixels, [0.5] * channels, [0.5] * channels)  # (p/255 − 0.5)/0.5 = 2·p/255 − 1
