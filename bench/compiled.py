"""torch.compile against the eager network, as the engine would call it: is it worth adopting?

    python -m bench.compiled [--batches 2,16] [--repeats 3] [--threads N]

The default U-Net (random weights) in channels-last on oneDNN, eager and through `torch.compile`
(inductor, `freezing` on, one static shape per batch size, as the engine's fixed call shapes would
need). Prints the compile time per shape, the median call time of each, and whether the compiled
rows keep the eager bits (they need not: the engine would then probe the compiled network instead).
Needs a C++ compiler, as inductor does on the CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from bench.flops import torch_threads
from bench.models import random_unet
from bench.report import fmt, median, table, timings
from diffusion.kernels import probe_inputs
from diffusion.unet import UNetConfig

CALLS = 20  # network calls per timed run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="2,16", help="call sizes (default 2,16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch._inductor.config as inductor

    inductor.freezing = True
    config = UNetConfig(32)
    rows = []
    with torch_threads(args.threads) as threads, torch.inference_mode():
        net = random_unet(config).to(memory_format=torch.channels_last)
        for batch in (int(b) for b in args.batches.split(",")):
            x, rates = probe_inputs(batch, (3, 32, 32), "cpu")
            x, variance = x.contiguous(memory_format=torch.channels_last), rates**2
            compiled = torch.compile(net, dynamic=False)
            started = time.perf_counter()
            out = compiled(x, variance)
            compile_s = time.perf_counter() - started
            same = torch.equal(out, net(x, variance))

            def calls(fn) -> None:
                for _ in range(CALLS):
                    fn(x, variance)  # noqa: B023

            eager_s = median(timings(lambda: calls(net), args.repeats)) / CALLS
            compiled_s = median(timings(lambda: calls(compiled), args.repeats)) / CALLS  # noqa: B023
            rows.append(
                [
                    batch,
                    f"{compile_s:.1f}",
                    fmt(1e3 * eager_s),
                    fmt(1e3 * compiled_s),
                    f"{eager_s / compiled_s:.2f}x",
                    "yes" if same else "no",
                ]
            )
    print(
        table(
            "torch.compile against eager (one network call)",
            ["batch", "compile s", "eager ms", "compiled ms", "speed-up", "same bits"],
            rows,
            [
                f"default U-Net 32x32, channels-last, oneDNN, {threads} threads; median of {args.repeats} runs of "
                f"{CALLS} calls; torch {torch.__version__}"
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
