"""Training images: a folder of pictures (centre-cropped, resized) or an .npz of uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

NPZ_KEYS = ("train", "images")


class DataError(ValueError):
    """The data path holds no usable images."""


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, then an antialiased resize to size x size: -> (size, size, 3) uint8."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def load_folder(path: Path, size: int) -> np.ndarray:
    images = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            with Image.open(file) as image:
                images.append(center_crop_resize(image, size))
        except (UnidentifiedImageError, OSError):
            continue  # not a picture: skip it
    if not images:
        raise DataError(f"{path}: no readable images")
    return np.stack(images)


def load_npz(path: Path, key: str | None = None) -> np.ndarray:
    with np.load(path) as archive:
        keys = [key] if key else [k for k in NPZ_KEYS if k in archive.files] or archive.files[:1]
        if not keys or keys[0] not in archive.files:
            raise DataError(f"{path}: no array {key or ' or '.join(NPZ_KEYS)!r}; it has {archive.files}")
        images = archive[keys[0]]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def load_captions(path: Path, key: str = "train") -> list[str]:
    """The captions of an .npz's `key` images (`<key>_captions`, as `diffusetv data emoji` writes them)."""
    name = f"{key}_captions"
    with np.load(path) as archive:
        if name not in archive.files:
            raise DataError(f"{path}: no array {name!r} of captions; it has {archive.files}")
        captions = archive[name]
    if not np.issubdtype(captions.dtype, np.str_) or captions.ndim != 1:
        raise DataError(f"{path}: {name} must be a 1-D unicode array, got {captions.dtype} {captions.shape}")
    return captions.tolist()


def load_images(path: str | Path, size: int, key: str | None = None) -> np.ndarray:
    """(N, size, size, 3) uint8 from a folder or an .npz; npz images must already be size x size."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    images = load_folder(path, size) if path.is_dir() else load_npz(path, key)
    if images.shape[1:3] != (size, size):
        raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, not {size}x{size}")
    return images


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images in [0, 1] (float64), for normalisation."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()
