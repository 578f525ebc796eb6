"""Exponential moving average of a model's parameters and buffers, with a warm-up.

The warm-up follows k-diffusion's `EMAWarmup`: decay = 1 - (1 + step / inv_gamma) ** -power,
clamped to [0, max_value]. Early on the average forgets fast, so a short run's EMA is already useful.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EMAWarmup:
    inv_gamma: float = 1.0
    power: float = 2.0 / 3.0
    max_value: float = 0.999
    min_value: float = 0.0

    def decay(self, step: int) -> float:
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power  # k-diffusion utils.EMAWarmup
        return 0.0 if step < 0 else min(self.max_value, max(self.min_value, value))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter and floating buffer; other buffers copied."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].lerp_(param.detach(), 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            ema_buffers[name].lerp_(buf, 1.0 - decay)
        else:
            ema_buffers[name].copy_(buf)
