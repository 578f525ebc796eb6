"""Images per second at equal quality: each sampler at the fewest steps not worse than DDIM at 50 steps, against
DDIM-50, on the engine as a worker runs a batch.

    python -m bench samplers [--repeats R] [--threads N] [--quick]

The steps come from the quality table's JSON (docs/quality.json, written by `python -m bench quality --json
docs/quality.json`: its `equal_quality`). For each model, a batch of `rows` images (seeds 0..rows−1, eta 0; the text
model with a training caption at its default guidance) is timed for DDIM-50 and for each sampler at its steps, in a
rotated order within each repeat; each figure is the median over the repeats of DDIM-50's seconds over the sampler's
of the same repeat: its images/s as a multiple of DDIM-50's.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.flops import torch_threads
from bench.report import table

QUALITY = Path("docs/quality.json")
DEFAULTS = {"repeats": 5, "rows": 16, "quality": QUALITY}
QUICK = {"repeats": 2, "rows": 2}
CAPTION = "red heart"


def timed(engine, rows: int, steps: int, sampler: str, conditions) -> float:
    started = time.perf_counter()
    engine.generate(list(range(rows)), steps, [0.0] * rows, conditions, samplers=[sampler] * rows)
    return time.perf_counter() - started


def chosen(quality: dict) -> dict[str, dict[str, int]]:
    """Per model, the steps of each sampler that is not worse than DDIM-50 somewhere in the table."""
    found = quality.get("results", {}).get("quality", quality)["equal_quality"]
    return {model: {s: k for s, k in each.items() if k is not None} for model, each in found.items()}


def run(repeats: int = 5, rows: int = 16, quality: Path = QUALITY, threads: int | None = None) -> dict:
    from bench.report import cpu_model
    from model_store.text import TextSpec
    from worker.engine import load_engine

    picked = chosen(json.loads(Path(quality).read_text()))
    results = []
    with torch_threads(threads) as used:
        for ref, steps_of in picked.items():
            engine = load_engine(ref, device="cpu")
            conditions = None
            if engine.model.conditioned:
                conditions = [engine.condition(CAPTION, TextSpec.of(engine.manifest).default_guidance)] * rows
            kinds = [("ddim", 50), *((s, k) for s, k in steps_of.items() if (s, k) != ("ddim", 50))]
            seconds: dict[tuple[str, int], list[float]] = {k: [] for k in kinds}
            timed(engine, rows, 2, "ddim", conditions)  # warm-up
            for r in range(repeats):
                for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    seconds[kind].append(timed(engine, rows, kind[1], kind[0], conditions))
            base = seconds[("ddim", 50)]
            for kind in kinds:
                ratios = [b / s for b, s in zip(base, seconds[kind], strict=True)]
                results.append({"model": ref, "sampler": kind[0], "steps": kind[1],
                                "images_per_s": rows / statistics.median(seconds[kind]),
                                "speedup": statistics.median(ratios)})  # fmt: skip
                print(f"  {ref} {kind[0]} {kind[1]} steps: {results[-1]['speedup']:.2f}x DDIM-50", flush=True)
    return {"cpu": cpu_model(), "threads": used, "rows": rows, "repeats": repeats, "results": results}


def format_result(result: dict) -> str:
    head = (
        f"Images/s at equal quality (steps from the quality table), batches of {result['rows']}, eta 0, on "
        f"{result['cpu']} ({result['threads']} threads); median of {result['repeats']} ratios measured in one run"
    )
    rows = [
        [r["model"], r["sampler"], r["steps"], f"{r['images_per_s']:.2f}", f"{r['speedup']:.2f}x"]
        for r in result["results"]
    ]
    return table(head, ["model", "sampler", "steps", "images/s", "vs DDIM-50"], rows, [])
