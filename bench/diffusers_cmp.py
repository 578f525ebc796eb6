"""Against diffusers: our engine and diffusers' DDIMPipeline on networks of the closest configuration.

    python -m bench.diffusers_cmp [--repeats N] [--steps N] [--threads N] [--json FILE] [--quick]

Theirs: `DDIMPipeline` with a `UNet2DModel` (sample_size 32, block_out_channels (32, 64, 96, 128),
layers_per_block 2, DownBlock2D/UpBlock2D only, no attention) and a `DDIMScheduler`, random weights,
`output_type="np"`, a seeded generator, under `torch.inference_mode()`. Ours: the worker's engine
(bench.engine), the same with `DIFFUSETV_COMPILE=true`, and our bare eager network forward without
the sampler or the determinism settings. The two networks differ in FLOPs per image-step,
so the comparison is in achieved GFLOP/s (FLOPs/image-step x image-steps/s), at batch 1 and 16, in
fp32 and in bf16 (theirs under `torch.autocast`). Needs `diffusers` (`pip install 'diffusetv[bench]'`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence

import torch

from bench.engine import AUTOCAST, engine_rate, raw_rate
from bench.flops import module_flops, torch_threads, unet_flops
from bench.models import bench_engine, supported_precisions
from bench.report import fmt, median, table, timings

BATCHES = (1, 16)
PRECISIONS = ("fp32", "bf16")
DEFAULTS = {"repeats": 3, "steps": 20}
QUICK = {"repeats": 2, "steps": 2, "compile": False}
WIDTHS = (32, 64, 96, 128)

DIFFERENCES = [
    "no attention on either side (UNet2DModel add_attention=False); the differences left in the networks:",
    "  time: diffusers embeds the timestep (sinusoidal, then a 2-layer MLP) and adds a projection of it",
    "    in every resnet; ours concatenates a 32-dim sinusoidal embedding of the noise variance to the input once",
    "  norm: diffusers GroupNorm(32)+SiLU before both convs of a resnet; ours BatchNorm (no affine) before the first",
    "  resampling: diffusers stride-2 conv down, nearest + 3x3 conv up; ours 2x2 average pool, bilinear (no conv)",
    "  depth: diffusers up blocks hold layers_per_block+1 = 3 resnets (ours 2); its conv_in is 3x3 (ours 1x1)",
    "  sampler: diffusers DDIM on 1000 discrete linear-beta steps, one generator for the batch, the whole batch",
    "    per call; ours offset-cosine continuous time, a generator per seed, calls padded to probed sizes",
]


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise SystemExit("bench diffusers: needs diffusers (pip install 'diffusetv[bench]')") from None
    return diffusers


def their_unet(image_size: int = 32, seed: int = 0):
    """diffusers' UNet2DModel closest to our default U-Net, with random weights, in eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    levels = len(WIDTHS)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=WIDTHS,
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=False,
    ).eval()


def their_pipeline(unet):
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def their_flops(unet) -> int:
    size = unet.config.sample_size
    return module_flops(unet, (torch.randn(1, unet.config.in_channels, size, size), torch.tensor(500)))


def pipeline_rate(pipe, batch: int, steps: int, repeats: int, precision: str = "fp32") -> float:
    """Median image-steps/s of the pipeline for `batch` images, after one short warm-up run."""
    dtype = AUTOCAST[precision]

    def call(n: int) -> None:
        autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            generator = torch.Generator("cpu").manual_seed(0)
            pipe(batch_size=batch, generator=generator, num_inference_steps=n, output_type="np")

    call(min(steps, 2))
    return batch * steps / median(timings(lambda: call(steps), repeats))


def compare(engine, compiled, pipe, batch, steps, repeats, precision, ours_flops, theirs_flops) -> dict:
    """One row: each repeat times ours, compiled, raw and theirs back to back, so that a ratio is taken
    within a repeat (the machine's speed drifts between repeats); each figure is the median over repeats."""
    runs: dict[str, list[float]] = {"ours": [], "compiled": [], "raw": [], "theirs": []}
    for _ in range(repeats):
        runs["ours"].append(ours_flops * engine_rate(engine, batch, steps, 1, budget_s=math.inf)[0] / 1e9)
        if compiled is not None:
            runs["compiled"].append(ours_flops * engine_rate(compiled, batch, steps, 1, budget_s=math.inf)[0] / 1e9)
        raw, _ = raw_rate(engine.denoiser.net, batch, steps, 1, precision, budget_s=math.inf)
        runs["raw"].append(ours_flops * raw / 1e9)
        runs["theirs"].append(theirs_flops * pipeline_rate(pipe, batch, steps, 1, precision) / 1e9)

    def ratio(name: str) -> float:
        pairs = zip(runs[name], runs["theirs"], strict=True)
        return median([a / b for a, b in pairs]) if runs[name] else math.nan

    gflops = {name: median(values) if values else math.nan for name, values in runs.items()}
    return {
        "precision": precision,
        "batch": batch,
        "ours_image_steps_per_s": gflops["ours"] * 1e9 / ours_flops,
        "theirs_image_steps_per_s": gflops["theirs"] * 1e9 / theirs_flops,
        "ours_gflops": gflops["ours"],
        "raw_gflops": gflops["raw"],
        "theirs_gflops": gflops["theirs"],
        "compiled_gflops": gflops["compiled"],
        "ratio_gflops": ratio("ours"),
        "ratio_raw_gflops": ratio("raw"),
        "ratio_compiled_gflops": ratio("compiled"),
        "ratio_image_steps": ratio("ours") * theirs_flops / ours_flops,
        "runs_gflops": runs,
    }


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    batches: Sequence[int] = BATCHES,
    precisions: Sequence[str] = PRECISIONS,
    compile: bool = True,
) -> dict:
    diffusers = require_diffusers()
    with torch_threads(threads) as n_threads:
        unet = their_unet()
        theirs_flops = their_flops(unet)
        pipe = their_pipeline(unet)
        rows = []
        offered = supported_precisions(precisions)
        for precision in offered:
            engine = bench_engine(precision)
            compiled = bench_engine(precision, compile=True) if compile else None
            ours_flops = unet_flops(engine.denoiser.net)
            for batch in batches:
                rows.append(compare(engine, compiled, pipe, batch, steps, repeats, precision, ours_flops, theirs_flops))
    return {
        "threads": n_threads,
        "steps": steps,
        "repeats": repeats,
        "diffusers": diffusers.__version__,
        "left_out": [p for p in precisions if p not in offered],
        "ours_flops_per_image_step": ours_flops,
        "theirs_flops_per_image_step": theirs_flops,
        "ours_parameters": sum(p.numel() for p in engine.denoiser.net.parameters()),
        "theirs_parameters": sum(p.numel() for p in unet.parameters()),
        "rows": rows,
    }


def format_result(res: dict) -> str:
    headers = [
        "precision",
        "batch",
        "ours img-steps/s",
        "ours GFLOP/s",
        "theirs img-steps/s",
        "theirs GFLOP/s",
        "ours/theirs",
        "compiled/theirs",
        "raw/theirs",
    ]
    rows = [
        [
            r.get("precision", "fp32"),
            r["batch"],
            fmt(r["ours_image_steps_per_s"]),
            fmt(r["ours_gflops"]),
            fmt(r["theirs_image_steps_per_s"]),
            fmt(r["theirs_gflops"]),
            f"{r['ratio_gflops']:.2f}x",
            f"{r.get('ratio_compiled_gflops', math.nan):.2f}x",
            f"{r['ratio_raw_gflops']:.2f}x",
        ]
        for r in res["rows"]
    ]
    notes = [
        f"ours: worker engine, {res['ours_flops_per_image_step'] / 1e9:.3f} GFLOP per image-step, "
        f"{res['ours_parameters']:,} parameters",
        "compiled: our engine with DIFFUSETV_COMPILE=true (torch.compile); raw: our bare eager network forward, "
        "the whole batch in one call, no sampler, no padding (not deterministic at batch 1)",
        f"theirs: diffusers {res['diffusers']} DDIMPipeline + UNet2DModel, "
        f"{res['theirs_flops_per_image_step'] / 1e9:.3f} GFLOP per image-step, {res['theirs_parameters']:,} parameters",
        f"ours/theirs is in GFLOP/s; {res['steps']} steps, eta 0, {res['threads']} threads; "
        "bf16: torch.autocast on both sides",
        f"each repeat times ours, compiled, raw and theirs back to back; rates and ratios are medians over "
        f"{res['repeats']} repeats of the per-repeat figures",
        *[f"{p}: left out, this CPU has no native {p} kernels" for p in res.get("left_out", [])],
        *DIFFERENCES,
    ]
    return table("Against diffusers (DDIM, same steps and batch)", headers, rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["diffusers", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
