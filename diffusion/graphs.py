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
Network = Callable[..., torch.Tensor]  # network(x, rate, *conditions)
WARMUP_CALLS = 2  # eager calls on a side stream before capture, as the PyTorch docs require


class CUDAGraphs:
    """`forward(x, rate, *conditions)` through a captured graph per shapes and dtypes of the inputs; falls back to
    eager."""

    def __init__(self, forward: Network) -> None:
        self.forward = forward
        self.captured: dict[tuple, tuple | None] = {}
        self.pool = None  # one memory pool for all captures: they are replayed one at a time

    @property
    def graphed_shapes(self) -> int:
        return sum(entry is not None for entry in self.captured.values())

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self.captured:
            try:
                self.captured[key] = self._capture(inputs)
            except RuntimeError as exc:  # out of memory, or an op that cannot be captured: eager was probed
                log.warning("no CUDA graph for network calls of shape %s (%s); they run eagerly", key[0][0], exc)
                self.captured[key] = None
        entry = self.captured[key]
        if entry is None:
            return self.forward(*inputs)
        graph, static_inputs, static_out = entry
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given)
        graph.replay()
        return static_out.clone()  # the next replay overwrites the static output

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> tuple | None:
        static_inputs = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                eager = self.forward(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.forward(*static_inputs)
        self.pool = graph.pool()
        graph.replay()
        if not torch.equal(static_out, eager):
            return None
        return graph, static_inputs, static_out
