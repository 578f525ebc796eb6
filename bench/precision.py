"""bf16 against fp32: the quality cost (PSNR of the served images over 64 seeds) and the speed of each.

    python -m bench precision [--steps 50] [--threads N] [--device cpu|cuda] [--json FILE]

Both engines are `worker.engine.load_engine` on the bundled emoji32 model (a trained network, so the
images are the ones users get), run on the same seeds with eta 0, 16 seeds per batch. PSNR compares
the uint8 images: 10 log10(255^2 / MSE), per image.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from bench.flops import torch_threads
from bench.report import fmt, median, table

DEFAULTS = {"repeats": 1, "steps": 50, "seeds": 64, "device": "cpu", "model": "emoji32", "batch": 16}
QUICK = {"steps": 2, "seeds": 4}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images; inf when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def images(engine, seeds: Sequence[int], steps: int, batch: int) -> tuple[np.ndarray, float]:
    """The engine's images for `seeds` (eta 0, `batch` per run) and the seconds they took."""
    started = time.perf_counter()
    chunks = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
    out = [engine.generate(chunk, steps, [0.0] * len(chunk)) for chunk in chunks]
    return np.concatenate(out), time.perf_counter() - started


def run(
    repeats: int = 1,
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    seeds: int = DEFAULTS["seeds"],
    device: str = DEFAULTS["device"],
    model: str = DEFAULTS["model"],
    batch: int = DEFAULTS["batch"],
) -> dict:
    from worker.engine import bf16_supported, load_engine

    if not bf16_supported(device):
        return {"device": device, "model": model, "left_out": f"the {device} here has no native bf16 kernels"}
    seed_list = list(range(seeds))
    with torch_threads(threads) as n_threads:
        out, seconds, ids = {}, {}, {}
        for precision in ("fp32", "bf16"):
            engine = load_engine(model, device=device, precision=precision)
            images(engine, seed_list[:batch], 1, batch)  # warm-up
            runs = [images(engine, seed_list, steps, batch) for _ in range(max(1, repeats))]
            out[precision] = runs[0][0]
            seconds[precision] = median([s for _, s in runs])
            ids[precision] = engine.id
    values = [psnr(a, b) for a, b in zip(out["fp32"], out["bf16"], strict=True)]
    finite = sorted(v for v in values if math.isfinite(v))
    return {
        "device": device,
        "model": model,
        "threads": n_threads,
        "steps": steps,
        "seeds": seeds,
        "engines": ids,
        "psnr_median": finite[len(finite) // 2] if finite else math.inf,
        "psnr_min": finite[0] if finite else math.inf,
        "identical": len(values) - len(finite),
        "max_abs_diff": int(np.abs(out["fp32"].astype(int) - out["bf16"].astype(int)).max()),
        "seconds": seconds,
        "speedup": seconds["fp32"] / seconds["bf16"],
    }


def format_result(res: dict) -> str:
    if "left_out" in res:
        notes = [f"bf16: not offered, {res['left_out']}"]
        return table("bf16 against fp32 (same seeds)", ["measure", "value"], [], notes)
    rows = [
        ["PSNR bf16 vs fp32, median", f"{res['psnr_median']:.1f} dB"],
        ["PSNR bf16 vs fp32, worst", f"{res['psnr_min']:.1f} dB"],
        ["identical images", f"{res['identical']} of {res['seeds']}"],
        ["largest pixel difference", f"{res['max_abs_diff']} of 255"],
        [f"fp32: {res['seeds']} images", f"{fmt(res['seconds']['fp32'])} s"],
        [f"bf16: {res['seeds']} images", f"{fmt(res['seconds']['bf16'])} s"],
        ["bf16 speed-up", f"{res['speedup']:.2f}x"],
    ]
    notes = [
        f"model {res['model']}, {res['steps']} steps, eta 0, seeds 0..{res['seeds'] - 1}, "
        f"{res['device']} at {res['threads']} threads",
        f"engines: fp32 {res['engines']['fp32']}, bf16 {res['engines']['bf16']}",
    ]
    return table("bf16 against fp32 (same seeds)", ["measure", "value"], rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["precision", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
