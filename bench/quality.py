"""Quality against network calls, per sampler: the table of docs/MODEL.md "Samplers", and its JSON.

    python -m bench quality [--json FILE] [--quick]

- **emoji32**: KID of n samples (seeds 0..n−1, eta 0) against the 140 held-out glyphs, in the emoji32-features space,
  with its 95% interval (diffusion.kid, as `diffusetv eval`), for DDIM at 10, 20, 50 and 100 steps and DPM-Solver++(2M)
  and UniPC at 5, 10 and 20.
- **emoji32-text**: training-caption top-5 (diffusion.prompt_eval: the share of samples whose own glyph is among their
  5 nearest of all glyphs), on a seeded subset of n training captions (seed = the caption's index) at the model's
  default guidance, with its 95% Wilson interval, for the same samplers and steps.

The reference sets (the glyphs' features) are computed once per model. Each row is written to a checkpoint as it
ends (`~/.cache/diffusetv-bench/quality-<model digest>.json`), and a run that is started again with the same settings
keeps the rows it has. **At equal quality** a sampler is not worse than DDIM at 50 steps when its interval's bound
toward better (KID's lower bound, top-5's upper one) reaches DDIM-50's other bound; `equal_quality` gives each
sampler's fewest such steps, which `python -m bench samplers` times.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from bench.flops import torch_threads
from bench.report import cpu_model, table

GRID = (("ddim", (10, 20, 50, 100)), ("dpmpp_2m", (5, 10, 20)), ("unipc", (5, 10, 20)))
BASELINE = ("ddim", 50)
DEFAULTS = {"n": 300, "models": ("emoji32", "emoji32-text"), "grid": GRID, "threads": None}
QUICK = {"n": 8, "grid": (("ddim", (4,)), ("dpmpp_2m", (2,)), ("unipc", (2,)))}
BATCH = 32
CACHE = Path.home() / ".cache" / "diffusetv-bench"
Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927), 95% by default."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def not_worse(row: dict, baseline: dict) -> bool:
    """Whether `row` is not worse than `baseline` at the intervals' edges: its better bound reaches the baseline's
    worse one (KID: lower is better; top-5: higher is better)."""
    if row["metric"] == "kid":
        return row["low"] <= baseline["high"]
    return row["high"] >= baseline["low"]


def equal_quality(rows: list[dict]) -> dict:
    """Per model and sampler, the fewest steps not worse than DDIM-50 (None where none is)."""
    found: dict = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if (r["sampler"], r["steps"]) == BASELINE), None)
        if base is None:
            continue
        found[model] = {}
        for sampler in dict.fromkeys(r["sampler"] for r in mine):
            ok = sorted(r["steps"] for r in mine if r["sampler"] == sampler and not_worse(r, base))
            found[model][sampler] = ok[0] if ok else None
    return found


def generate(engine, seeds, steps: int, sampler: str, conditions=None) -> np.ndarray:
    out = []
    for start in range(0, len(seeds), BATCH):
        chunk = list(seeds[start : start + BATCH])
        cond = None if conditions is None else conditions[start : start + BATCH]
        out.append(engine.generate(chunk, steps, [0.0] * len(chunk), cond, samplers=[sampler] * len(chunk)))
    return np.concatenate(out)


def kid_row(engine, extractor, reference, n: int, sampler: str, steps: int) -> dict:
    from diffusion.kid import kid

    started = time.perf_counter()
    images = generate(engine, list(range(n)), steps, sampler)
    seconds = time.perf_counter() - started
    k = kid(extractor.extract(images), reference)
    return {"metric": "kid", "value": k.kid, "low": k.low, "high": k.high, "n": n, "seconds": seconds}


def top5_row(engine, extractor, glyphs, captions, targets, guidance, sampler: str, steps: int) -> dict:
    from diffusion.prompt_eval import nearest_ranks

    started = time.perf_counter()
    conditions = [engine.condition(c, guidance) for c in captions]
    images = generate(engine, list(range(len(captions))), steps, sampler, conditions)
    seconds = time.perf_counter() - started
    ranks = nearest_ranks(extractor.extract(images), glyphs, targets)
    hits = int((np.asarray(ranks) < 5).sum())
    low, high = wilson(hits, len(captions))
    return {"metric": "top5", "value": hits / len(captions), "low": low, "high": high, "n": len(captions),
            "guidance": guidance, "seconds": seconds}  # fmt: skip


def measurer(engine, extractor, data: dict, n: int):
    """measure(sampler, steps) -> a row's figures: KID for a prompt-free model, training-caption top-5 for a text one.
    The reference features are computed once, here."""
    from diffusion.prompt_eval import subset
    from model_store.text import TextSpec

    if not engine.model.conditioned:
        reference = extractor.extract(data["heldout"])
        return lambda sampler, steps: kid_row(engine, extractor, reference, n, sampler, steps)
    glyphs = extractor.extract(np.concatenate([data["train"], data["heldout"]]))
    picked = subset(len(data["train_captions"]), n, 0)
    captions = [str(data["train_captions"][i]) for i in picked]
    guidance = TextSpec.of(engine.manifest).default_guidance
    return lambda sampler, steps: top5_row(engine, extractor, glyphs, captions, picked, guidance, sampler, steps)


def run(n: int = 300, models=("emoji32", "emoji32-text"), grid=GRID, threads: int | None = None) -> dict:
    from diffusion import emoji
    from model_store.features import load_extractor
    from worker.engine import load_engine

    data = emoji.build(emoji.DEFAULT_FONT, 32)
    extractor = load_extractor("emoji32-features")
    rows: list[dict] = []
    with torch_threads(threads):
        for ref in models:
            engine = load_engine(ref, device="cpu")
            m = engine.manifest
            settings = {"n": n, "grid": [[s, list(steps)] for s, steps in grid], "digest": m.digest}
            checkpoint = CACHE / f"quality-{m.name}-{m.version}-{m.digest[:12]}.json"
            kept = read_checkpoint(checkpoint, settings)
            measure = measurer(engine, extractor, data, n)
            for sampler, each in grid:
                for steps in each:
                    key = f"{sampler}@{steps}"
                    if key not in kept:
                        kept[key] = {"model": m.ref, "sampler": sampler, "steps": steps, **measure(sampler, steps)}
                        write_checkpoint(checkpoint, settings, kept)
                    r = kept[key]
                    print(f"  {m.ref} {sampler} {steps} steps: {r['metric']} {r['value']:.4g} "
                          f"[{r['low']:.4g}, {r['high']:.4g}] ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
                    rows.append(r)
    return {"cpu": cpu_model(), "n": n, "features": extractor.name, "rows": rows, "equal_quality": equal_quality(rows)}


def read_checkpoint(path: Path, settings: dict) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data["rows"] if data.get("settings") == settings else {}


def write_checkpoint(path: Path, settings: dict, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}))
    tmp.replace(path)


def format_result(result: dict) -> str:
    head = (
        f"Quality per sampler and steps, n = {result['n']}, eta 0, on {result['cpu']}: emoji32's KID against the "
        f"held-out glyphs ({result['features']}; lower is better), emoji32-text's training-caption top-5 (higher is "
        "better), 95% intervals"
    )
    rows = [
        [r["model"], r["sampler"], r["steps"], r["metric"], f"{r['value']:.4g}", f"[{r['low']:.4g}, {r['high']:.4g}]",
         f"{r['seconds']:.0f}"]
        for r in result["rows"]
    ]  # fmt: skip
    notes = [
        f"{model}: fewest steps not worse than DDIM-50: "
        + ", ".join(f"{s} {'none' if k is None else k}" for s, k in found.items())
        for model, found in result["equal_quality"].items()
    ]
    return table(head, ["model", "sampler", "steps", "metric", "value", "95% interval", "seconds"], rows, notes)
