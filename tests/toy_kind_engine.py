"""The worker side of the test-only kind `toy-linear` (see toy_kind): a fixed linear map, x0 = scale·x + shift·t."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import toy_kind
from torch import nn

from diffusion.ddim import GridStep
from model_store import Manifest, Store
from model_store.weights import read_state, save_model
from worker.kinds import KindModel


@dataclass(frozen=True)
class ToyConfig:
    height: int = 6
    width: int = 10
    channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class ToyNet(nn.Module):
    """x0 = scale * x + shift * t, per channel."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.full((1, config.channels, 1, 1), 0.6))
        self.shift = nn.Parameter(torch.full((1, config.channels, 1, 1), 0.3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift * t


def alpha_bar(t: float) -> float:
    """Its own schedule: alpha_bar runs linearly from 0.02 at t = 1 to 1 at t = 0."""
    return 1.0 - 0.98 * t


class ToyLinear(KindModel):
    def network(self, device: str) -> nn.Module:
        net = ToyNet(ToyConfig(**self.manifest.config))
        net.load_state_dict(read_state(self.manifest, toy_kind.NAME), strict=True)
        return net.to(device).eval()

    def grid(self, steps: int) -> list[GridStep]:
        return [GridStep(1 - k / steps, alpha_bar(1 - k / steps), alpha_bar(1 - (k + 1) / steps)) for k in range(steps)]

    def read(self, out, x_t, a_t):
        eps = (x_t - a_t**0.5 * out) / (1 - a_t) ** 0.5  # the network predicts x0; eps follows from it
        return eps, out

    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        images = torch.round(((x0.float().cpu() / 2 + 0.5).clamp(0, 1)) * 255).to(torch.uint8)
        return images.permute(0, 2, 3, 1).contiguous().numpy()


MODELS = {toy_kind.NAME: ToyLinear}  # what the worker runs for the kinds that toy_kind registers


def save_toy(store: Store, name: str = "toy", config: ToyConfig | None = None) -> Manifest:
    """Publish a toy-linear model as the next version of `name`."""
    net = ToyNet(config or ToyConfig())
    return save_model(store, name, net, "toy", [0.0], [1.0], {"note": "test kind"}, kind=toy_kind.NAME)
