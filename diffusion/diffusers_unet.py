"""diffusers' `UNet2DModel`, built from its config (diffusers imported only here, offline), and the wrapper
that calls it as every network here is called: `net(x, t)` -> the predicted tensor."""

from __future__ import annotations

import os

import torch
from torch import nn


def unet2d(config: dict) -> nn.Module:
    """An untrained `UNet2DModel` of this config; an ImportError says how to install diffusers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model is built from local files; nothing is fetched
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise ImportError(f"diffusers-unet2d models need diffusers (pip install 'diffusetv[worker]'): {exc}") from None
    return UNet2DModel.from_config(config)


class UNet2DNetwork(nn.Module):
    """`net(x, t)` -> the UNet's output tensor, for a (B, 1, 1, 1) or (B,) tensor of discrete timesteps."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t.reshape(-1)).sample  # UNet2DModel.forward: one timestep per row
