"""Which CPU kernels keep a row's output independent of the thread count and of its batch?

    python -m bench.invariance

Runs the default U-Net (random weights, non-zero head) on 16 random inputs with oneDNN and with
PyTorch's native kernels, at 1 and 2 threads and batch sizes 1, 2, 3, 8 and 16, and prints whether
row 0 is bit-identical across them, with the largest difference. docs/DETERMINISM.md quotes it.
"""

from __future__ import annotations

import torch

from diffusion.denoiser import native_cpu_kernels
from diffusion.unet import UNet, UNetConfig

BATCHES = (1, 2, 3, 8, 16)


def outputs(net: UNet, x: torch.Tensor, v: torch.Tensor, threads: int, native: bool) -> dict[int, torch.Tensor]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            if native:
                with native_cpu_kernels():
                    return {b: net(x[:b], v[:b])[0] for b in BATCHES}
            return {b: net(x[:b], v[:b])[0] for b in BATCHES}
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    torch.manual_seed(0)
    net = UNet(UNetConfig(32)).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x, v = torch.randn(16, 3, 32, 32), torch.full((16, 1, 1, 1), 0.5)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'kernels':8} {'threads':>7}  " + "  ".join(f"b={b:<2} vs 16" for b in BATCHES[:-1]) + "   1 vs 2 threads")
    for native in (False, True):
        results = {t: outputs(net, x, v, t, native) for t in (1, 2)}
        for t in (1, 2):
            r = results[t]
            cells = [
                "equal     " if torch.equal(r[b], r[16]) else f"{(r[b] - r[16]).abs().max().item():.1e}   "
                for b in BATCHES[:-1]
            ]
            other = results[3 - t]
            threads = (
                "equal"
                if all(torch.equal(r[b], other[b]) for b in BATCHES)
                else (f"{max((r[b] - other[b]).abs().max().item() for b in BATCHES):.1e}")
            )
            print(f"{'native' if native else 'oneDNN':8} {t:>7}  " + "  ".join(cells) + f"   {threads}")


if __name__ == "__main__":
    main()
