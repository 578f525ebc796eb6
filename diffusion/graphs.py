"""CUDA graphs of the network calls: one capture per call shape, replayed with a single launch.

A DDIM step at small batch is bound by kernel launches, not arithmetic: the U-Net is a few hundred
small kernels. The engine's call shapes are few and fixed (diffusion.kernels), which is what a
CUDA graph needs. A replay runs the kernels the capture recorded, the same ones as the eager call;
each capture is still checked bit for bit against the eager call on its first input, and a shape
whose replay differs stays eager (PyTorch docs, "CUDA Graphs"; the static-input pattern).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("diffusetv.graphs")
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WARMUP_CALLS = 2  # eager calls on a side stream before capture, as the PyTorch docs require


class CUDAGraphs:
    """`forward(x, rate)` through a captured graph per (shape, dtype) of x; falls back to eager."""

    def __init__(self, forward: Network) -> None:
        self.forward = forward
        self.captured: dict[tuple, tuple | None] = {}
        self.pool = None  # one memory pool for all captures: they are replayed one at a time

    @property
    def graphed_shapes(self) -> int:
        return sum(entry is not None for entry in self.captured.values())

    def __call__(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, tuple(rate.shape))
        if key not in self.captured:
            try:
                self.captured[key] = self._capture(x, rate)
            except RuntimeError as exc:  # out of memory, or an op that cannot be captured: eager was probed
                log.warning("no CUDA graph for network calls of shape %s (%s); they run eagerly", key[0], exc)
                self.captured[key] = None
        entry = self.captured[key]
        if entry is None:
            return self.forward(x, rate)
        graph, static_x, static_rate, static_out = entry
        static_x.copy_(x)
        static_rate.copy_(rate)
        graph.replay()
        return static_out.clone()  # the next replay overwrites the static output

    def _capture(self, x: torch.Tensor, rate: torch.Tensor) -> tuple | None:
        static_x, static_rate = x.clone(), rate.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                eager = self.forward(static_x, static_rate)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.forward(static_x, static_rate)
        self.pool = graph.pool()
        graph.replay()
        if not torch.equal(static_out, eager):
            return None
        return graph, static_x, static_rate, static_out
