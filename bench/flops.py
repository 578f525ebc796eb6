"""Model FLOPs per image-step, and the machine's fp32 matmul rate to measure them against.

    python -m bench.flops [--threads N]

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` reports for one forward at batch 1: two
per multiply-add, convolutions and matrix products only (normalisations and activations are not
counted). The matmul rate is the median of timed 2048x2048 fp32 `torch.matmul`s, 2*n^3 FLOPs each.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.report import format_machine, machine, median, timings
from diffusion.unet import UNet, UNetConfig

MATMUL_N = 2048
MATMUL_RUNS = 20
MATMUL_WARMUP = 3


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` torch threads (None: as now); restores the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def count_flops(forward: Callable[[], object]) -> int:
    """The FLOPs FlopCounterMode counts while `forward` runs, under inference mode."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward()
    return int(counter.get_total_flops())


def unet_flops(net: UNet | None = None, config: UNetConfig | None = None) -> int:
    """FLOPs per image-step of our U-Net: one forward at batch 1."""
    net = net if net is not None else UNet(config or UNetConfig(32)).eval()
    cfg = net.config
    x = torch.randn(1, cfg.channels, cfg.image_size, cfg.image_size)
    variance = torch.full((1, 1, 1, 1), 0.5)
    return count_flops(lambda: net(x, variance))


def module_flops(net: nn.Module, inputs: Sequence[object]) -> int:
    """FLOPs of one call net(*inputs), for networks of other shapes (diffusers' UNet2DModel)."""
    return count_flops(lambda: net(*inputs))


def matmul_gflops(
    threads: int | None = None, n: int = MATMUL_N, runs: int = MATMUL_RUNS, warmup: int = MATMUL_WARMUP
) -> float:
    """Median fp32 GFLOP/s of an n x n `torch.matmul` at `threads` threads."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            torch.matmul(a, b)
        seconds = median(timings(lambda: torch.matmul(a, b), runs))
    return 2 * n**3 / seconds / 1e9


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    with torch_threads(args.threads) as threads:
        print(format_machine(machine()))
        print(f"default U-Net, 32x32: {unet_flops() / 1e9:.3f} GFLOP per image-step (FlopCounterMode, batch 1)")
        print(f"fp32 matmul {MATMUL_N}x{MATMUL_N}, {threads} threads: {matmul_gflops(threads):.1f} GFLOP/s (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
