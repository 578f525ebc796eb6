"""The network's wrapper: noise-rate conditioning, normalisation, call shapes and image output.

As in k-diffusion's `Denoiser`, the U-Net does not know its parameterisation: this wrapper feeds it
the noise variance (noise_rate**2), denormalises its predictions and turns them into pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion.graphs import CUDAGraphs
from diffusion.kernels import CallShapes, Probe
from diffusion.probe_cache import cached_probe

ONE_ROW = CallShapes((1,))
COMPILE_CACHE_LIMIT = 64  # static graphs per network: more than any call-shape set


def compiled_network(net: nn.Module) -> nn.Module:
    """`torch.compile` for inference: frozen weights, static shapes, and room for one graph per call shape
    (past dynamo's cache limit a shape would silently run eager, another arithmetic)."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    inductor.freezing = True
    dynamo.cache_size_limit = max(dynamo.cache_size_limit, COMPILE_CACHE_LIMIT)
    dynamo.accumulated_cache_size_limit = max(dynamo.accumulated_cache_size_limit, COMPILE_CACHE_LIMIT)
    dynamo.fail_on_recompile_limit_hit = True  # never fall back to eager, another arithmetic, in silence
    return torch.compile(net, dynamic=False)


@contextlib.contextmanager
def native_cpu_kernels() -> Iterator[None]:
    """Run CPU ops on PyTorch's native kernels instead of oneDNN's."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def noise_variance(noise_rate: torch.Tensor) -> torch.Tensor:
    """The U-Net's time input: the noise variance, noise_rate**2 (DESIGN.md, Embedding)."""
    return noise_rate**2


def denormalised_pixels(x0: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Denormalise, clip to [0, 1] and quantise as round(x * 255): (B, C, H, W) -> (B, H, W, C) uint8."""
    mean_ = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_ = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    images = x0.float().cpu() * std_ + mean_
    images = torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def normalised_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of `denormalised_pixels`: (B, H, W, C) uint8 -> (B, C, H, W) float32, (p/255 − mean)/std.
    Its round trip gives the same pixels back (the error is far below half a level)."""
    mean_ = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_ = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    return ((x - mean_) / std_).contiguous()


class Denoiser:
    """eps(x, noise_rate) for DDIM, a function of each row alone: the same bits in any batch.

    The network is called with `time_input(noise_rate)` (the noise variance by default; a model kind
    gives its own map from its grid's time to what its network takes).

    Every network call has one of `shapes.sizes` rows (a short call is padded with zero images at
    the same noise level, and the padding is dropped). Which sizes keep a row's bits is a property of
    the kernels, found by `calibrate` (diffusion.kernels); until then the only size is the one given.
    `native_cpu` runs PyTorch's own CPU kernels instead of oneDNN's (slower; for comparisons).
    `cuda_graphs` replays each call shape from a CUDA graph once calibrated (diffusion.graphs).
    `compile` runs the network through `torch.compile` (inductor, frozen weights, one static graph
    per call shape): fused elementwise work, another arithmetic, probed like any other.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        shapes: CallShapes = ONE_ROW,
        native_cpu: bool = False,
        channels_last: bool = False,
        autocast_dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
        compile: bool = False,
        time_input: Callable[[torch.Tensor], torch.Tensor] = noise_variance,
    ) -> None:
        self.device = next(net.parameters()).device
        self.time_input = time_input
        self.channels_last = channels_last
        self.net = (net.to(memory_format=torch.channels_last) if channels_last else net).eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.shapes = shapes
        self.native_cpu = native_cpu and self.device.type == "cpu"
        self.autocast_dtype = autocast_dtype
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs: CUDAGraphs | None = None
        self.compiled = compile
        self.calibrated = False
        self.cached = False
        self.forward = compiled_network(self.net) if compile else self.net

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.native_cpu:
            stack.enter_context(native_cpu_kernels())
        if self.autocast_dtype is not None:
            # no cast cache: a CUDA graph must not capture casts cached by an earlier call
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False))
        return stack

    def _stance(self) -> contextlib.AbstractContextManager:
        """Once a compiled network is calibrated, compiling anew is an error: that code was never probed."""
        if self.compiled and self.calibrated:
            return torch.compiler.set_stance("fail_on_recompile")
        return contextlib.nullcontext()

    def network(self, x: torch.Tensor, noise_rate: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """One network call on exactly these rows (each with its row of `conditions`, for a conditioned network):
        predicted noise, float32, contiguous.

        The input is always a fresh tensor made under inference mode, so the probe and the sampler
        hand the network the same kind of tensor (a compiled network is specialised on it)."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        with self._context(), self._stance():
            x = torch.empty_like(x, memory_format=layout).copy_(x)
            out = self.forward(x, self.time_input(noise_rate), *conditions)  # the U-Net's: the noise variance
        return out.float().contiguous()

    def calibrate(
        self,
        shape: Sequence[int],
        reference: int,
        candidates: Sequence[int] | None = None,
        conditions: torch.Tensor | None = None,
        cache: Path | None = None,
        key: dict | None = None,
    ) -> Probe:
        """Probe the kernels (diffusion.kernels.probe) and call with the sizes that keep a row's bits from now on.
        A conditioned network is probed with `conditions`, one row per probe row.

        With a `cache` directory, a probe cached under `key` is used once one reference call confirms it
        (diffusion.probe_cache); `self.cached` says whether it was."""
        self.calibrated = False
        found, self.cached = cached_probe(
            self.network, shape, reference, self.device, candidates, cache, key or {}, conditions
        )
        self.shapes = found.shapes
        self.calibrated = True
        if self.use_graphs:
            self.graphs = CUDAGraphs(self.network)
        return found

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, noise_rate: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        for size in self.shapes.plan(x.shape[0]):
            rows = [t[start : start + size] for t in (x, noise_rate, *conditions)]
            real = rows[0].shape[0]
            if real < size:  # pad with zero images at the same noise level and condition as the first row
                rows[0] = torch.cat([rows[0], rows[0].new_zeros((size - real, *rows[0].shape[1:]))])
                rows[1:] = [torch.cat([t, t[:1].expand(size - real, *t.shape[1:])]) for t in rows[1:]]
            call = self.graphs if self.graphs is not None else self.network
            outputs.append(call(*rows)[:real])
            start += real
        return torch.cat(outputs)

    def to_pixels(self, x0: torch.Tensor) -> np.ndarray:
        """Denormalise, clip to [0, 1] and quantise as round(x * 255): (B, C, H, W) -> (B, H, W, C) uint8."""
        return denormalised_pixels(x0, self.mean.flatten().tolist(), self.std.flatten().tolist())
