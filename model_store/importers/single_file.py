"""A single-file checkpoint (a `.safetensors` or `.ckpt` as AUTOMATIC1111 or ComfyUI load) passed where a
diffusers pipeline folder is expected: refused, with what to do instead."""

from __future__ import annotations

from pathlib import Path


def refusal(path: Path) -> str:
    """The one-line refusal of a single-file checkpoint."""
    return f"{path}: a single-file checkpoint; convert it to a diffusers pipeline folder first (docs/MODELS.md)"
