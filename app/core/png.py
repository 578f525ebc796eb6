"""PNG encoding under the determinism contract: Pillow, 8-bit RGB (L for 1-channel models), default
compression, no timestamps, and a tEXt chunk `parameters` of compact JSON with sorted keys."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"


def parameters_json(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True, separators=(",", ":"))


def image(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 -> an RGB image, (H, W, 1) -> an L image."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"expected (H, W, 3) or (H, W, 1) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    return Image.fromarray(pixels[:, :, 0], mode="L") if pixels.shape[2] == 1 else Image.fromarray(pixels, mode="RGB")


def encode_png(pixels: np.ndarray, parameters: dict[str, Any] | None = None) -> bytes:
    """(H, W, C) uint8 -> PNG bytes carrying the parameters (none: a plain PNG, e.g. a preview)."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, parameters_json(parameters))
    buffer = io.BytesIO()
    image(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_parameters(png: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.text[PARAMETERS_KEY])


def decode_png(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))
