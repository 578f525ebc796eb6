"""How well a text model follows its prompt: retrieval of the captioned glyph, colour words, and prompted KID.

- **Prompt adherence.** One sample per caption (seed = the caption's index in its list). Among all glyphs of
  the data set (training and held-out) in a feature space, the sample's nearest glyphs are ranked by
  Euclidean distance; top-k is the share of samples whose own glyph is among their k nearest. On held-out
  captions, whose glyphs were never trained on, it measures generalisation.
- **Colour adherence.** For a caption with exactly one chromatic colour word ("blue heart"), the dominant hue
  of the sample's coloured pixels falls in that word's hue range.
- **Prompted KID** of the held-out captions' samples against their own glyphs (diffusion.kid), over subsets
  of half of each set: subsets of all of both would all be the same estimate, an interval of no width.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Hue ranges in degrees, [start, end) on the colour wheel; red wraps around 0.
COLOURS: dict[str, tuple[float, float]] = {
    "red": (340.0, 15.0),
    "orange": (15.0, 42.0),
    "yellow": (42.0, 70.0),
    "green": (70.0, 165.0),
    "blue": (165.0, 255.0),
    "purple": (255.0, 300.0),
    "pink": (300.0, 340.0),
}
MIN_SATURATION = 0.35  # a pixel counts as coloured above this saturation and MIN_VALUE value
MIN_VALUE = 0.25
HUE_BINS = 36


def nearest_ranks(samples: np.ndarray, glyphs: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """For each sample's (D,) feature, the rank of its target glyph among all glyphs by distance (0 = nearest)."""
    d = ((samples[:, None, :] - glyphs[None, :, :]) ** 2).sum(axis=-1)  # (S, G) squared Euclidean distances
    own = d[np.arange(len(samples)), np.asarray(targets)]
    return (d < own[:, None]).sum(axis=1)  # glyphs strictly nearer than the target


def top_k(ranks: np.ndarray, k: int) -> float:
    """Share of samples whose target is among their k nearest glyphs."""
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def colour_word(caption: str) -> str | None:
    """The caption's one chromatic colour word, or None (no colour word, or several)."""
    found = {w for w in re.findall(r"[a-z]+", caption.lower()) if w in COLOURS}
    return found.pop() if len(found) == 1 else None


def hue_name(hue: float) -> str:
    """The colour word whose range holds `hue` (degrees)."""
    for name, (start, end) in COLOURS.items():
        if (start <= hue < end) if start < end else (hue >= start or hue < end):
            return name
    raise ValueError(f"hue {hue} is in no range")  # the ranges cover the circle


def dominant_hue(image: np.ndarray) -> float | None:
    """The centre of the most populated hue bin among coloured pixels, weighted by saturation; None if grey."""
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    coloured = (hsv[:, 1] > MIN_SATURATION) & (hsv[:, 2] > MIN_VALUE)
    if not coloured.any():
        return None
    hist, edges = np.histogram(hsv[coloured, 0] * 360.0, bins=HUE_BINS, range=(0, 360), weights=hsv[coloured, 1])
    i = int(np.argmax(hist))
    return float((edges[i] + edges[i + 1]) / 2)


@dataclass(frozen=True)
class ColourResult:
    caption: str
    word: str
    seen: str | None  # the dominant hue's colour word, None for a grey picture

    @property
    def matches(self) -> bool:
        return self.seen == self.word


def colour_adherence(images: np.ndarray, captions: Sequence[str]) -> list[ColourResult]:
    """For each caption with one colour word, whether its image's dominant hue is that colour."""
    out = []
    for image, caption in zip(images, captions, strict=True):
        word = colour_word(caption)
        if word is None:
            continue
        hue = dominant_hue(image)
        out.append(ColourResult(caption, word, None if hue is None else hue_name(hue)))
    return out


def subset(n: int, size: int, seed: int) -> list[int]:
    """A seeded subset of `size` indices out of range(n), in ascending order."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(size, n), replace=False).tolist())


# generate(captions, seeds) -> (B, H, W, 3) uint8, one image per caption; extract(images) -> (N, D) features.
TRAIN_SUBSET = 200
BATCH = 16


def sample_captions(generate, captions: Sequence[str], progress: bool | None = None, desc: str = "") -> np.ndarray:
    """One sample per caption, seed = its index in `captions`, BATCH at a time, with a progress bar."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(captions), desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
        for start in range(0, len(captions), BATCH):
            chunk = list(captions[start : start + BATCH])
            out.append(generate(chunk, list(range(start, start + len(chunk)))))
            bar.update(len(chunk))
    return np.concatenate(out)


def evaluate_prompts(
    generate,
    extract,
    train: np.ndarray,
    heldout: np.ndarray,
    train_captions: Sequence[str],
    heldout_captions: Sequence[str],
    train_subset: int = TRAIN_SUBSET,
    seed: int = 0,
    subsets: int = 100,
    progress: bool | None = None,
) -> dict:
    """Top-1/5 retrieval on a seeded subset of training captions and on every held-out caption, colour adherence
    on held-out captions with a colour word, and KID of the held-out captions' samples against their glyphs."""
    from diffusion.kid import kid

    glyphs = extract(np.concatenate([train, heldout]))
    picked = subset(len(train_captions), train_subset, seed)
    parts = {
        "train": ([train_captions[i] for i in picked], picked),
        "heldout": (list(heldout_captions), [len(train) + j for j in range(len(heldout_captions))]),
    }
    result: dict = {"glyphs": len(glyphs), "train_subset_seed": seed}
    samples = {}
    for name, (captions, targets) in parts.items():
        samples[name] = sample_captions(generate, captions, progress, desc=f"{name} captions")
        ranks = nearest_ranks(extract(samples[name]), glyphs, targets)
        result[name] = {"captions": len(captions), "top1": top_k(ranks, 1), "top5": top_k(ranks, 5)}
    colours = colour_adherence(samples["heldout"], parts["heldout"][0])
    result["colour"] = {
        "captions": len(colours),
        "adherence": float(np.mean([c.matches for c in colours])) if colours else 0.0,
        "cases": [{"caption": c.caption, "word": c.word, "seen": c.seen} for c in colours],
    }
    half = max(2, len(heldout) // 2)
    result["prompted_kid"] = kid(extract(samples["heldout"]), extract(heldout), subsets, half, seed=seed).to_json()
    result["samples"] = samples  # for pictures; dropped from JSON
    return result


def format_prompts(result: dict) -> str:
    k = result["prompted_kid"]
    lines = [
        f"Prompt adherence: nearest glyphs among all {result['glyphs']} (one sample per caption, seed = its index)",
        f"{'captions':34} {'n':>5} {'top-1':>7} {'top-5':>7}",
    ]
    for name, label in (("train", "training (seeded subset)"), ("heldout", "held-out (never trained on)")):
        r = result[name]
        lines.append(f"{label:34} {r['captions']:>5} {r['top1']:>7.3f} {r['top5']:>7.3f}")
    c = result["colour"]
    lines.append(f"colour adherence on held-out captions with a colour word: {c['adherence']:.3f} of {c['captions']}")
    lines.append(
        f"KID of the held-out captions' samples against their glyphs: {k['kid']:.4g} [{k['low']:.4g}, {k['high']:.4g}]"
        f" ({k['subsets']} subsets of {k['subset_size']} of each)"
    )
    return "\n".join(lines)
