"""Image grids: tile (N, H, W, C) uint8 images row-major, with no gaps between tiles."""

from __future__ import annotations

import math

import numpy as np


def grid_columns(n: int) -> int:
    """ceil(sqrt(n)) columns."""
    return math.ceil(math.sqrt(n))


def make_grid(images: np.ndarray, cols: int | None = None, fill: int = 255) -> np.ndarray:
    """(N, H, W, C) -> (rows*H, cols*W, C); empty cells of the last row are `fill`."""
    n, h, w, c = images.shape
    cols = cols or grid_columns(n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * h, cols * w, c), fill, dtype=images.dtype)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def tile(grid: np.ndarray, index: int, size: tuple[int, int], cols: int) -> np.ndarray:
    """The index-th (H, W) tile of a grid made with `cols` columns."""
    h, w = size
    r, col = divmod(index, cols)
    return grid[r * h : (r + 1) * h, col * w : (col + 1) * w]
