"""The network's wrapper: noise-rate conditioning, normalisation, batch padding and image output.

As in k-diffusion's `Denoiser`, the U-Net does not know its parameterisation: this wrapper feeds it
the noise variance (noise_rate**2), denormalises its predictions and turns them into pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def native_cpu_kernels() -> Iterator[None]:
    """Run CPU ops on PyTorch's native kernels instead of oneDNN's, whose results vary with the thread count."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """The network sees only calls of exactly `chunk` rows: ceil(n / chunk) of them, the last one padded."""
    return [chunk] * -(-n // chunk)


class Denoiser:
    """eps(x, noise_rate) for DDIM, invariant to the batch and to the thread count by construction.

    A sample's output must not depend on how many others share its batch, nor on how many threads
    the worker runs. Measured on the development CPU (PyTorch 2.13): oneDNN's convolutions change
    with both (about 2e-7 apart between 1 and 2 threads, and between batch sizes), and PyTorch's
    native CPU convolutions change with the batch size but not with the thread count. So on the CPU
    the network runs on native kernels (`native_cpu=True`), and every call has exactly `chunk` rows
    (short calls are padded with zero images at the same noise level and the padding is dropped).
    With the same call shape and the same kernels, a row's output is a function of that row alone.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        chunk: int = 1,
        native_cpu: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.net = net.eval()
        self.device = next(net.parameters()).device
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.chunk = chunk
        self.native_cpu = native_cpu and self.device.type == "cpu"
        self.autocast_dtype = autocast_dtype

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.native_cpu:
            stack.enter_context(native_cpu_kernels())
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        return stack

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, noise_rate: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        for size in chunk_sizes(x.shape[0], self.chunk):
            xs, rs = x[start : start + size], noise_rate[start : start + size]
            real = xs.shape[0]
            if real < size:  # pad with zero images at the same noise level
                xs = torch.cat([xs, xs.new_zeros((size - real, *xs.shape[1:]))])
                rs = torch.cat([rs, rs[:1].expand(size - real, -1, -1, -1)])
            with self._context():
                out = self.net(xs, rs**2)  # the network is conditioned on the noise variance
            outputs.append(out[:real].float())
            start += real
        return torch.cat(outputs)

    def to_pixels(self, x0: torch.Tensor) -> np.ndarray:
        """Denormalise, clip to [0, 1] and quantise as round(x * 255): (B, C, H, W) -> (B, H, W, C) uint8."""
        images = x0.float().cpu() * self.std + self.mean
        images = torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        return images.permute(0, 2, 3, 1).contiguous().numpy()
