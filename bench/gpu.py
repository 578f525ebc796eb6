"""The engine on a GPU: the determinism contract there, and images/s at 64x64 and 50 steps by batch size.

    python -m bench gpu [--steps 50] [--repeats 3] [--device cuda] [--json FILE]

Determinism: the bundled emoji32 model through `worker.engine.load_engine`, 8 seeds with mixed etas,
each alone, all in one batch, and behind 5 other seeds; the float tensors (and so the pixels) must be
bit-identical, and a second run must repeat them. Throughput: the worker's engine serving a
random-weights U-Net of the default widths at 64x64, `Engine.generate` for a batch of fresh seeds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from bench.flops import unet_flops
from bench.models import BENCH_MODEL, supported_precisions, temporary_store
from bench.report import fmt, median, table, timings
from diffusion.ddim import last_step
from diffusion.unet import UNetConfig

DEFAULTS = {
    "repeats": 3,
    "steps": 50,
    "size": 64,
    "batches": (1, 8, 32, 64, 128, 256, 512, 1024),
    "device": "cuda",
    "precisions": ("fp32", "bf16"),
}
QUICK = {"repeats": 1, "steps": 2, "size": 16, "batches": (1, 4)}
SEEDS = [11, 3, 7, 0, 42, 5, 19, 23]
ETAS = [0.0, 0.5, 1.0, 0.0, 0.3, 1.0, 0.0, 0.7]
OTHERS = [100, 101, 102, 103, 104]


def x0(engine, seeds: Sequence[int], steps: int, etas: Sequence[float]) -> torch.Tensor:
    return last_step(engine.run(seeds, steps, etas)).x0_pred.cpu()


def determinism(device: str, precision: str, steps: int) -> dict:
    """Alone, in one batch, behind other seeds, and again: bit-identical float tensors and pixels?"""
    from worker.engine import load_engine

    engine = load_engine("emoji32", device=device, precision=precision)
    alone = torch.cat([x0(engine, [s], steps, [e]) for s, e in zip(SEEDS, ETAS, strict=True)])
    together = x0(engine, SEEDS, steps, ETAS)
    behind = x0(engine, OTHERS + SEEDS, steps, [0.0] * len(OTHERS) + ETAS)[len(OTHERS) :]
    again = x0(engine, SEEDS, steps, ETAS)
    graphs, engine.denoiser.graphs = engine.denoiser.graphs, None
    eager = x0(engine, SEEDS, steps, ETAS)  # without CUDA graphs
    engine.denoiser.graphs = graphs
    runs = (together, behind, again, eager)
    same = [torch.equal(alone, t) for t in runs]
    pixels = engine.pixels(alone)
    return {
        "precision": precision,
        "engine": engine.id,
        "call_sizes": list(engine.probe.shapes.sizes),
        "rejected": list(engine.probe.rejected),
        "identical": all(same),
        "checks": dict(zip(("one batch", "behind others", "second run", "without graphs"), same, strict=True)),
        "max_abs_diff": max(float((alone - t).abs().max()) for t in runs),
        "pixels_identical": bool(all((engine.pixels(t) == pixels).all() for t in runs)),
        "graphed_shapes": graphs.graphed_shapes if graphs is not None else 0,
    }


def throughput(device: str, precision: str, size: int, steps: int, batches: Sequence[int], repeats: int) -> dict:
    from worker.engine import load_engine

    config = UNetConfig(size)
    with temporary_store(config) as store:
        engine = load_engine(BENCH_MODEL, store, device, precision)
    flops = unet_flops(config=config)
    rows = []
    graphs = engine.denoiser.graphs
    for mode in ("graphs", "eager") if graphs is not None else ("eager",):
        engine.denoiser.graphs = graphs if mode == "graphs" else None
        for batch in batches:
            seeds = list(range(batch))
            try:
                engine.generate(seeds, 1, [0.0] * batch)  # warm-up (and the captures)
                seconds = median(timings(lambda: engine.generate(seeds, steps, [0.0] * batch), repeats))  # noqa: B023
            except torch.OutOfMemoryError:
                break
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "images_per_s": batch / seconds,
                    "image_steps_per_s": batch * steps / seconds,
                    "tflops": flops * batch * steps / seconds / 1e12,
                }
            )
    best = max(rows, key=lambda r: r["images_per_s"])
    return {
        "precision": precision,
        "engine": engine.id,
        "call_sizes": len(engine.probe.shapes.sizes),
        "largest_call": engine.probe.shapes.largest,
        "rows": rows,
        "best_batch": best["batch"],
        "best_mode": best["mode"],
        "best_images_per_s": best["images_per_s"],
    }


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    size: int = DEFAULTS["size"],
    batches: Sequence[int] = DEFAULTS["batches"],
    device: str = DEFAULTS["device"],
    precisions: Sequence[str] = DEFAULTS["precisions"],
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    precisions = supported_precisions(precisions, device)  # bf16 only where the device has native kernels
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "flops_per_image_step": unet_flops(config=UNetConfig(size)),
        "determinism": [determinism(device, p, min(steps, 20)) for p in precisions],
        "throughput": [throughput(device, p, size, steps, batches, repeats) for p in precisions],
    }


def format_result(res: dict) -> str:
    det = [
        [
            d["precision"],
            d["engine"],
            "yes" if d["identical"] else "NO",
            f"{d['max_abs_diff']:.1e}",
            "yes" if d["pixels_identical"] else "NO",
            f"{len(d['call_sizes'])} ({d['call_sizes'][0]}..{d['call_sizes'][-1]})",
            d["graphed_shapes"],
        ]
        for d in res["determinism"]
    ]
    out = table(
        f"Determinism on {res['device_name']} (emoji32, 8 seeds, mixed eta)",
        ["precision", "engine", "bit-identical", "max diff", "pixels", "kept call sizes", "graphed"],
        det,
        [
            "bit-identical: each seed alone = all 8 in one batch = behind 5 other seeds = a second run = "
            "without CUDA graphs, as float tensors; pixels: the same for the uint8 images",
            "kept call sizes: how many sizes up to the reference the kernel probe kept (smallest..largest); "
            "graphed: call shapes replayed from a CUDA graph",
        ],
    )
    rows = [
        [t["precision"], r["mode"], r["batch"], fmt(r["images_per_s"]), fmt(r["image_steps_per_s"]), fmt(r["tflops"])]
        for t in res["throughput"]
        for r in t["rows"]
    ]
    notes = [
        f"worker engine, random-weights default U-Net at {res['size']}x{res['size']}, {res['steps']} steps, eta 0, "
        f"median of {res['repeats']}; {res['flops_per_image_step'] / 1e9:.2f} GFLOP per image-step; "
        f"torch {res['torch']}; graphs: network calls replayed from CUDA graphs, eager: launched one by one",
    ] + [
        f"{t['precision']}: best {fmt(t['best_images_per_s'])} images/s at batch {t['best_batch']} ({t['best_mode']}; "
        f"network calls of at most {t['largest_call']} rows; engine {t['engine']})"
        for t in res["throughput"]
    ]
    headers = ["precision", "mode", "batch", "images/s", "img-steps/s", "TFLOP/s"]
    return out + "\n\n" + table(f"Images/s on {res['device_name']}", headers, rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["gpu", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
