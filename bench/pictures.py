"""The cost of image-to-image against a plain job, on the engine as a worker runs them.

    python -m bench pictures [--steps N] [--repeats R] [--threads N] [--quick]

A batch of `rows` emoji32 jobs from noise (plain), and the same batch from pictures (the model's own images) at
strengths 0.3, 0.6 and 1.0: each timed from the rows' inputs to their uint8 images (`Engine.run` and
`Engine.images`; a picture row is mapped to model space first). The kinds are timed in turn within each repeat (in
a rotated order), and
each figure is the median over the repeats of its seconds divided by the plain batch's of the same repeat. An
image-to-image row runs the last int(steps × strength) steps, so expect about `strength` × a plain job.
Inversion's cost (naive against refined) is `python -m bench inversion`'s.
"""

from __future__ import annotations

import statistics
import time

from bench.flops import torch_threads
from bench.report import fmt, table

DEFAULTS = {"steps": 50, "repeats": 5, "rows": 8, "model": "emoji32@1"}
QUICK = {"steps": 10, "repeats": 2, "rows": 2}
STRENGTHS = (0.3, 0.6, 1.0)


def timed(engine, seeds, steps, pictures) -> float:
    from diffusion.ddim import last_step

    started = time.perf_counter()
    run = engine.run(seeds, steps, [0.0] * len(seeds), starts=pictures)
    engine.images(last_step(run), pictures)
    return time.perf_counter() - started


def run(steps: int = 50, repeats: int = 5, rows: int = 8, model: str = "emoji32@1", threads: int | None = None):
    from bench.report import cpu_model
    from worker.engine import PictureIn, load_engine

    with torch_threads(threads) as used:
        engine = load_engine(model, device="cpu")
        seeds = list(range(rows))
        sources = engine.generate([1000 + s for s in seeds], steps, [0.0] * rows)  # pictures the model drew
        kinds = {"plain": None} | {f"strength {s}": [PictureIn(pixels, s) for pixels in sources] for s in STRENGTHS}
        timed(engine, seeds, steps, None)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in kinds}
        names = list(kinds)
        for repeat in range(repeats):  # each repeat in another order, so that no kind always runs first
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                seconds[name].append(timed(engine, seeds, steps, kinds[name]))
    ratios = {
        name: statistics.median(t / p for t, p in zip(times, seconds["plain"], strict=True))
        for name, times in seconds.items()
    }
    return {
        "model": engine.manifest.ref,
        "steps": steps,
        "rows": rows,
        "repeats": repeats,
        "threads": used,
        "cpu": cpu_model(),
        "seconds": {name: statistics.median(times) for name, times in seconds.items()},
        "ratio": ratios,
    }


def format_result(result: dict) -> str:
    rows = [[name, fmt(result["seconds"][name]), f"{result['ratio'][name]:.2f}x"] for name in result["seconds"]]
    notes = [
        f"{result['model']}, a batch of {result['rows']} rows, {result['steps']} steps, eta 0, {result['threads']} "
        f"threads, median of {result['repeats']} repeats, {result['cpu']}",
        "ratio = the batch's seconds / the plain batch's of the same repeat (expect about the strength)",
    ]
    return table("image-to-image cost", ["job", "seconds (median)", "ratio to plain"], rows, notes)
