"""The emoji data set: single-codepoint glyphs of the Noto Color Emoji font, rendered with Pillow.

Regional indicators, skin-tone modifiers, variation selectors, ZWJ, tags, keycap parts and ASCII are
left out. Each glyph is cropped to its bounding box with a small margin, centred on white, resized
with antialiasing, and split deterministically into train (90%) and held-out (10%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_PACKAGE = "fonts-noto-color-emoji"
FONT_SIZE = 109  # the bitmap strike of Noto Color Emoji
CANVAS = 160
MARGIN = 0.06  # of the glyph's longer side, on each side
HELDOUT_SHARE = 0.1
SPLIT_SEED = 0

EXCLUDED = [
    (0x0000, 0x00FF),  # ASCII and Latin-1: digits, '#', '*', (c), (r) are keycap or text parts
    (0x200D, 0x200D),  # zero-width joiner
    (0x20E3, 0x20E3),  # combining enclosing keycap
    (0xFE00, 0xFE0F),  # variation selectors
    (0x1F1E6, 0x1F1FF),  # regional indicators
    (0x1F3FB, 0x1F3FF),  # skin-tone modifiers
    (0xE0000, 0xE007F),  # tags
]


class FontMissing(FileNotFoundError):
    pass


def codepoints(font_path: str | Path) -> list[int]:
    """The font's single codepoints, minus the excluded ranges."""
    from fontTools.ttLib import TTFont

    with TTFont(str(font_path), lazy=True) as font:
        cmap = font.getBestCmap()
    return sorted(cp for cp in cmap if not any(lo <= cp <= hi for lo, hi in EXCLUDED))


def render(font: ImageFont.FreeTypeFont, cp: int, size: int) -> np.ndarray | None:
    """One glyph on white, cropped to its box plus margin, squared and resized: (size, size, 3) uint8."""
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).text((CANVAS // 2, CANVAS // 2), chr(cp), font=font, embedded_color=True, anchor="mm")
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = round(max(glyph.size) * (1 + 2 * MARGIN))
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def build(font_path: str | Path = DEFAULT_FONT, size: int = 32) -> dict[str, np.ndarray]:
    """Render every glyph and split: {'train', 'heldout'} with their '_codepoints' and '_captions'.

    The captions (CLDR short names, `diffusion.captions`) are fixed-width unicode arrays, so the .npz
    loads without pickle. They do not take part in the split: it is the same with or without them."""
    from diffusion.captions import caption

    if not Path(font_path).is_file():
        raise FontMissing(f"{font_path}: font not found; install Debian's {FONT_PACKAGE} or pass --font")
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    images, cps = [], []
    for cp in codepoints(font_path):
        image = render(font, cp, size)
        if image is not None:
            images.append(image)
            cps.append(cp)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_held = round(len(images) * HELDOUT_SHARE)
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    stack, cps_arr = np.stack(images), np.array(cps, dtype=np.int64)
    captions = np.array([caption(cp) for cp in cps], dtype=np.str_)
    return {
        "train": stack[train],
        "heldout": stack[held],
        "train_codepoints": cps_arr[train],
        "heldout_codepoints": cps_arr[held],
        "train_captions": captions[train],
        "heldout_captions": captions[held],
    }


def write(out: str | Path, font_path: str | Path = DEFAULT_FONT, size: int = 32) -> dict[str, np.ndarray]:
    arrays = build(font_path, size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return arrays
