"""PNG encoding under the determinism contract: Pillow, 8-bit RGB (L for 1-channel models), default
compression, no timestamps, and a tEXt chunk `parameters` of compact JSON with sorted keys. `encoder_fingerprint`
names the encoder (Pillow and its zlib) in a worker's engine id: other bytes for the same pixels, another engine."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from typing import Any

import numpy as np
import PIL
from PIL import Image, PngImagePlugin, features

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


@functools.cache
def encoder_fingerprint() -> str:
    """This process's PNG encoder, as 16 hex characters: the sha256 of `encode_png`'s bytes for a varied,
    deterministic RGB picture and an L one, with Pillow's version and its zlib and zlib-ng versions. Two encoders
    that give other bytes for the same pixels (Pillow 11.1's move to zlib-ng did) have other fingerprints."""
    fingerprint = hashlib.sha256()
    for pixels in fingerprint_pictures():
        fingerprint.update(encode_png(pixels, {"fingerprint": list(pixels.shape)}))
    versions = {name: features.version(name) for name in ("zlib", "zlib_ng")}  # None where absent
    fingerprint.update(json.dumps({"pillow": PIL.__version__, **versions}, sort_keys=True).encode())
    return fingerprint.hexdigest()[:16]


def fingerprint_pictures() -> list[np.ndarray]:
    """A 128x96 RGB picture (gradients, noise, a flat block) and a 64x48 L one (a gradient and noise). The noise is
    SHAKE-256 output, the same on every platform and version (a numpy Generator's stream may change between numpy
    releases)."""
    noise = np.frombuffer(hashlib.shake_256(b"diffusetv encoder fingerprint").digest(96 * 128 + 48 * 64), np.uint8)
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2 + x // 4, noise[: 96 * 128].reshape(96, 128)], axis=2).astype(np.uint8)
    rgb[60:90, 8:56] = (200, 120, 40)  # a flat block
    rgb[:, 100:, 2] = rgb[:, 100:, 0]  # a stripe without noise
    y, x = np.mgrid[0:48, 0:64]
    grey = ((x * 4 + y) % 256).astype(np.uint8)
    grey[24:] = noise[96 * 128 :].reshape(48, 64)[24:]
    return [rgb, grey[:, :, None]]
