"""What a negative prompt does: how often emoji32-text's "heart" is red, without and with the negative prompt "red".

    python -m bench negative [--steps N] [--threads N] [--quick]

Seeds 0-15, the model's default guidance, eta 0. Each image's dominant hue is the circular mean hue of its pixels
with HSV saturation > 0.35 and value > 0.25 (an image with none has no hue); it is red within 25° of 0°. The goal
(the negative prompts issue): the negative prompt "red" makes red at least half as frequent.
"""

from __future__ import annotations

import json

import numpy as np

from bench.flops import torch_threads
from bench.report import table

DEFAULTS = {"steps": 50, "seeds": 16, "model": "emoji32-text"}
QUICK = {"steps": 5, "seeds": 4}
PROMPT = "heart"
NEGATIVE = "red"
MIN_SATURATION = 0.35
MIN_VALUE = 0.25
RED_WITHIN = 25.0  # degrees either side of 0°


def dominant_hue(image: np.ndarray) -> float | None:
    """An (H, W, 3) uint8 image's dominant hue in degrees, [0, 360): the circular mean of the HSV hues of its pixels
    with saturation > MIN_SATURATION and value > MIN_VALUE; None when no pixel is that colourful."""
    rgb = image[..., :3].reshape(-1, 3).astype(np.float64) / 255.0
    top, bottom = rgb.max(axis=1), rgb.min(axis=1)
    chroma = top - bottom
    saturation = np.divide(chroma, top, out=np.zeros_like(top), where=top > 0)
    keep = (saturation > MIN_SATURATION) & (top > MIN_VALUE)
    if not keep.any():
        return None
    (r, g, b), top, chroma = rgb[keep].T, top[keep], chroma[keep]
    # HSV hue, in sixths of the circle: from the channel that is the largest
    sixths = np.where(top == r, ((g - b) / chroma) % 6, np.where(top == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    angles = np.deg2rad(60.0 * sixths)
    mean = np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()))  # the circular mean
    return float(mean % 360.0)


def is_red(hue: float | None) -> bool:
    """Whether a dominant hue is within RED_WITHIN degrees of 0° (red), on the circle."""
    return hue is not None and min(hue % 360.0, 360.0 - hue % 360.0) <= RED_WITHIN


def run(steps: int = 50, seeds: int = 16, model: str = "emoji32-text", threads: int | None = None) -> dict:
    from model_store.text import TextSpec
    from worker.engine import load_engine

    with torch_threads(threads) as used:
        engine = load_engine(model, device="cpu")
        guidance = TextSpec.of(engine.manifest).default_guidance  # a request's guidance when it sends none
        drawn = list(range(seeds))
        hues = {}
        for negative in (None, NEGATIVE):
            conditions = [engine.condition(PROMPT, guidance, negative)] * seeds
            images = engine.generate(drawn, steps, [0.0] * seeds, conditions=conditions)
            hues[negative or ""] = [dominant_hue(image) for image in images]
    return {
        "model": engine.manifest.ref,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "guidance": guidance,
        "steps": steps,
        "seeds": drawn,
        "threads": used,
        "hues": {"none": hues[""], NEGATIVE: hues[NEGATIVE]},
        "red": {"none": sum(map(is_red, hues[""])), NEGATIVE: sum(map(is_red, hues[NEGATIVE]))},
    }


def format_result(result: dict) -> str:
    red, n = result["red"], len(result["seeds"])
    rows = [
        [f"{result['prompt']!r}, no negative prompt", f"{red['none']}/{n}"],
        [
            f"{result['prompt']!r}, negative prompt {result['negative_prompt']!r}",
            f"{red[result['negative_prompt']]}/{n}",
        ],
    ]
    met = red[result["negative_prompt"]] * 2 <= red["none"]
    notes = [
        f"{result['model']}, seeds {result['seeds'][0]}-{result['seeds'][-1]}, {result['steps']} steps, eta 0, "
        f"guidance {result['guidance']:g}, {result['threads']} threads",
        f"red: the dominant hue (circular mean over pixels with saturation > {MIN_SATURATION}, value > {MIN_VALUE}) "
        f"within {RED_WITHIN:g}° of 0°",
        f"goal, red at least halved: {'met' if met else 'not met'}",
    ]
    line = json.dumps({"model": result["model"], "steps": result["steps"], "seeds": n, "red": red, "met": met})
    return table("negative prompts: how often a heart is red", ["request", "red"], rows, notes) + "\n" + line
