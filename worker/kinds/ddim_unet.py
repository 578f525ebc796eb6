"""Kind `ddim-unet`: the Keras-topology U-Net, conditioned on the noise variance, predicting ε.

The Keras example's continuous time grid (t_k = 1 - k/N) over the manifest's schedule, and pixels
denormalised with the manifest's per-channel mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from diffusion.ddim import GridStep, keras_grid
from diffusion.denoiser import denormalised_pixels, noise_variance, normalised_pixels
from diffusion.schedule import get_schedule
from model_store.weights import load_model
from worker.kinds import KindModel


class DDIMUNet(KindModel):
    def network(self, device: str) -> nn.Module:
        return load_model(self.manifest, device)

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        return noise_variance(t)  # the grid's time is the noise rate; the U-Net takes its square

    def grid(self, steps: int, sampler: str = "ddim") -> list[GridStep]:
        return keras_grid(get_schedule(self.manifest.schedule), steps)

    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        return denormalised_pixels(x0, self.manifest.mean, self.manifest.std)

    def to_model(self, pixels: np.ndarray, gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        return normalised_pixels(pixels, self.manifest.mean, self.manifest.std)  # (p/255 − mean)/std
