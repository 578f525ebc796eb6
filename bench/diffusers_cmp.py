"""Against diffusers, the same network both ways: one imported UNet2DModel through our engine and through
diffusers' DDIMPipeline.

    python -m bench diffusers [--repeats N] [--steps N] [--threads N] [--json FILE] [--quick]

The network has the ddpm-cifar10-32 architecture (35.7 M parameters, attention at 16×16) with random
weights, fp32. It is saved as a `DDPMPipeline` folder and imported with `diffusetv import diffusers`
(model_store.importers.diffusers). Ours: the worker's engine on that store version, with its kernel
probe, padding and per-seed noise. Theirs: `DDIMPipeline(unet, scheduler)` on the same UNet2DModel
object, `output_type="np"`, a seeded generator, under `torch.inference_mode()`. Each repeat times both
back to back, and the ratio is taken within a repeat. The load (ours: the probe; theirs: nothing) is
timed once, apart. Needs diffusers (`pip install 'diffusetv[worker]'`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.flops import module_flops, torch_threads
from bench.report import fmt, median, table

BATCHES = (1, 8)
DEFAULTS = {"repeats": 3, "steps": 10}
QUICK = {"repeats": 1, "steps": 2, "architecture": "tiny"}

# google/ddpm-cifar10-32's unet/config.json (the architecture only; the weights are random here).
CIFAR10_32 = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "attention_head_dim": None,
}
# A smoke-test stand-in with the same block types (--quick).
TINY = {
    **CIFAR10_32,
    "sample_size": 16,
    "layers_per_block": 1,
    "block_out_channels": [16, 32, 32, 32],
    "norm_num_groups": 8,
}
ARCHITECTURES = {"ddpm-cifar10-32": CIFAR10_32, "tiny": TINY}


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise SystemExit("bench diffusers: needs diffusers (pip install 'diffusetv[worker]')") from None
    return diffusers


def their_unet(config: dict, seed: int = 0):
    """A UNet2DModel of `config` with random weights, in eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**config).eval()


def imported_engine(unet, folder: Path):
    """The same UNet saved as a DDPMPipeline folder, imported into a temporary store, loaded as the worker does."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from model_store import Store
    from model_store.importers.diffusers import import_diffusers
    from worker.engine import load_engine

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder / "pipe")
    store = Store(folder / "models")
    import_diffusers(folder / "pipe", "samenet", store=store)
    started = time.perf_counter()
    engine = load_engine("samenet", store, "cpu", "fp32")
    return engine, time.perf_counter() - started


def their_pipeline(unet):
    from diffusers import DDIMPipeline, DDPMScheduler

    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler())  # DDIMScheduler.from_config, as for an import
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_seconds(pipe, batch: int, steps: int) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        pipe(batch_size=batch, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=steps,
             output_type="np")  # fmt: skip
        return time.perf_counter() - started


def engine_seconds(engine, batch: int, steps: int) -> float:
    started = time.perf_counter()
    engine.generate(list(range(batch)), steps, [0.0] * batch)
    return time.perf_counter() - started


def compare(engine, pipe, batch: int, steps: int, repeats: int) -> dict:
    """One row: each repeat times ours and theirs back to back; figures are medians over repeats."""
    engine_seconds(engine, batch, 1)  # warm-up, both sides
    pipeline_seconds(pipe, batch, 1)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(batch / engine_seconds(engine, batch, steps))
        theirs.append(batch / pipeline_seconds(pipe, batch, steps))
    return {
        "batch": batch,
        "ours_images_per_s": median(ours),
        "theirs_images_per_s": median(theirs),
        "ratio": median([a / b for a, b in zip(ours, theirs, strict=True)]),
        "calls": list(engine.denoiser.shapes.plan(batch)),
        "runs": {"ours": ours, "theirs": theirs},
    }


def profile(engine, unet, batch: int, steps: int = 2) -> dict:
    """Where the time goes: our share of a run spent in network calls, and one call of their UNet per row at
    1 row and at `batch` rows (the ceiling of one-row calls is the ratio of the two)."""
    network, spent = engine.denoiser.network, [0.0]

    def timed(x, t):
        started = time.perf_counter()
        out = network(x, t)
        spent[0] += time.perf_counter() - started
        return out

    engine.denoiser.network = timed
    try:
        total = engine_seconds(engine, batch, steps)
    finally:
        engine.denoiser.network = network
    size = unet.config.sample_size
    x, t = torch.randn(batch, unet.config.in_channels, size, size), torch.full((batch,), 500)

    def call_s(rows: int) -> float:
        with torch.inference_mode():
            unet(x[:rows], t[:rows])
            started = time.perf_counter()
            unet(x[:rows], t[:rows])
            return time.perf_counter() - started

    one, many = call_s(1), call_s(batch) / batch
    return {
        "batch": batch,
        "network_share": spent[0] / total,
        "their_row_s_at_1": one,
        "their_row_s_at_batch": many,
        "one_row_ceiling": many / one,
    }


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    batches: Sequence[int] = BATCHES,
    architecture: str = "ddpm-cifar10-32",
) -> dict:
    diffusers = require_diffusers()
    config = ARCHITECTURES[architecture]
    with torch_threads(threads) as n_threads, tempfile.TemporaryDirectory() as tmp:
        unet = their_unet(config)
        size = config["sample_size"]
        flops = module_flops(unet, (torch.randn(1, 3, size, size), torch.tensor(500)))
        engine, load_s = imported_engine(unet, Path(tmp))
        pipe = their_pipeline(unet)
        rows = [compare(engine, pipe, batch, steps, repeats) for batch in batches]
        where = profile(engine, unet, max(batches))
        probe = engine.probe
    return {
        "threads": n_threads,
        "steps": steps,
        "repeats": repeats,
        "diffusers": diffusers.__version__,
        "architecture": architecture,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "flops_per_image_step": flops,
        "load_s": load_s,
        "kept_sizes": list(probe.shapes.sizes),
        "rejected_sizes": list(probe.rejected),
        "rows": rows,
        "profile": where,
    }


def format_result(res: dict) -> str:
    p = res["profile"]
    headers = ["batch", "ours images/s", "theirs images/s", "ours/theirs", "our calls (rows)"]
    rows = [
        [r["batch"], fmt(r["ours_images_per_s"]), fmt(r["theirs_images_per_s"]), f"{r['ratio']:.2f}x", r["calls"]]
        for r in res["rows"]
    ]
    notes = [
        f"the same network both ways: {res['architecture']} architecture, random weights, fp32, "
        f"{res['parameters']:,} parameters, {res['flops_per_image_step'] / 1e9:.2f} GFLOP per image-step",
        "ours: imported with `diffusetv import diffusers`, run by the worker's engine (probe, padding, per-seed noise)",
        f"theirs: diffusers {res['diffusers']} DDIMPipeline on the same UNet2DModel object",
        f"{res['steps']} steps, eta 0, {res['threads']} threads; medians over {res['repeats']} repeats, each timing "
        "both sides back to back",
        f"our load (kernel probe) took {res['load_s']:.1f} s; kept call sizes {res['kept_sizes']}, "
        f"rejected {res['rejected_sizes']}",
        f"profile at batch {p['batch']}: {100 * p['network_share']:.1f}% of our time is network calls; their UNet "
        f"takes {p['their_row_s_at_1'] * 1e3:.0f} ms for a 1-row call and {p['their_row_s_at_batch'] * 1e3:.0f} ms "
        f"a row in a {p['batch']}-row call: one-row calls can reach {p['one_row_ceiling']:.2f}x at that batch",
    ]
    return table("Against diffusers: the same network both ways (DDIM)", headers, rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["diffusers", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
