"""The network's wrapper: noise-rate conditioning, normalisation, batch padding and image output.

As in k-diffusion's `Denoiser`, the U-Net does not know its parameterisation: this wrapper feeds it
the noise variance (noise_rate**2), denormalises its predictions and turns them into pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def pad_size(n: int, min_batch: int, chunk: int | None) -> list[int]:
    """Sizes the network is called with for n samples: chunks of exactly `chunk`, else one of max(n, min_batch)."""
    if chunk:
        return [chunk] * -(-n // chunk)
    return [max(n, min_batch)]


class Denoiser:
    """eps(x, noise_rate) for DDIM, batch-invariant by construction.

    A sample's output must not depend on how many others share its batch. On CPU a batch of one
    takes a different kernel path than batches of two or more (measured: about 1e-7 apart, while
    sizes 2..16 agree bit for bit), so the network is never called with fewer than `min_batch`
    rows; short batches are padded with zeros. Devices whose kernels change with the batch size
    set `chunk`, and every call is then exactly `chunk` rows.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        min_batch: int = 2,
        chunk: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.net = net.eval()
        self.device = next(net.parameters()).device
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.min_batch = min_batch
        self.chunk = chunk
        self.autocast_dtype = autocast_dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, noise_rate: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        outputs, start = [], 0
        for size in pad_size(n, self.min_batch, self.chunk):
            xs, rs = x[start : start + size], noise_rate[start : start + size]
            real = xs.shape[0]
            if real < size:  # pad with zero images at the same noise level
                xs = torch.cat([xs, xs.new_zeros((size - real, *xs.shape[1:]))])
                rs = torch.cat([rs, rs[:1].expand(size - real, -1, -1, -1)])
            with self._autocast():
                out = self.net(xs, rs**2)  # the network is conditioned on the noise variance
            outputs.append(out[:real].float())
            start += real
        return torch.cat(outputs)

    def to_pixels(self, x0: torch.Tensor) -> np.ndarray:
        """Denormalise, clip to [0, 1] and quantise as round(x * 255): (B, C, H, W) -> (B, H, W, C) uint8."""
        images = x0.float().cpu() * self.std + self.mean
        images = torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        return images.permute(0, 2, 3, 1).contiguous().numpy()
