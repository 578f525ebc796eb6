"""Which network call sizes give a row the same bits, at each thread count and on each kernel family?

    python -m bench.invariance [--reference 16] [--threads 1,2,3,4] [--compiled]

Runs the kernel probe (diffusion.kernels.probe, as a worker does at start) on the default U-Net
(random weights, non-zero head) at 32x32, for oneDNN with channels-last (the engine's setting),
oneDNN with the default memory format, and PyTorch's native kernels, at each thread count. Prints
the sizes kept, the reference size and the fingerprint of the arithmetic. With --compiled, also
the network through torch.compile (DIFFUSETV_COMPILE), probed on sizes 1, 2, 4, 8, 16 as the engine
does (about a minute of compiling per thread count). docs/DETERMINISM.md quotes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from bench.models import random_unet
from diffusion.denoiser import Denoiser
from diffusion.kernels import probe
from diffusion.unet import UNetConfig
from worker.engine import COMPILED_SIZES

FAMILIES = {
    "oneDNN channels-last": {"channels_last": True},
    "oneDNN": {},
    "native": {"native_cpu": True},
}
COMPILED = {"compiled channels-last": {"channels_last": True, "compile": True}}


def ranges(sizes: Sequence[int]) -> str:
    """1,2,3,5,7,8 -> '1-3, 5, 7-8'."""
    out, start = [], None
    for i, s in enumerate(sizes):
        start = s if start is None else start
        if i + 1 == len(sizes) or sizes[i + 1] != s + 1:
            out.append(f"{start}-{s}" if s > start else f"{s}")
            start = None
    return ", ".join(out) or "none"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=int, default=16, help="the largest call probed (default 16, as the worker)")
    p.add_argument("--threads", default="1,2,3,4", help="thread counts to probe (default 1,2,3,4)")
    p.add_argument("--compiled", action="store_true", help="also probe the torch.compile'd network")
    args = p.parse_args(argv)
    config = UNetConfig(32)
    shape = (config.channels, config.image_size, config.image_size)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, default U-Net 32x32")
    print(f"{'kernels':22} {'threads':>7}  {'fingerprint':16}  {'reference':>9}  sizes that keep a row's bits")
    previous = torch.get_num_threads()
    try:
        families = FAMILIES | (COMPILED if args.compiled else {})
        for family, options in families.items():
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                denoiser = Denoiser(random_unet(config), [0.5] * 3, [0.25] * 3, **options)
                candidates = COMPILED_SIZES if options.get("compile") else None
                found = probe(denoiser.network, shape, args.reference, candidates=candidates)
                print(
                    f"{family:22} {threads:>7}  {found.fingerprint[:16]}  {found.shapes.largest:>9}  "
                    f"{ranges(found.shapes.sizes)}"
                )
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
