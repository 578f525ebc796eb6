"""Captions of the emoji glyphs: their CLDR short names ("red heart", "cat face"), from the `emoji` package.

The `emoji` package carries the Unicode CLDR English short names, so captions need nothing from the
network. Python's `unicodedata` names are the fallback only: they are character names, not what a
person calls the picture (U+2764 is "HEAVY BLACK HEART", drawn red).
"""

from __future__ import annotations

import unicodedata

VARIATION_SELECTOR_16 = "\ufe0f"  # "emoji presentation": CLDR keys many single glyphs with it


def cldr_entry(cp: int) -> dict | None:
    import emoji

    char = chr(cp)
    return emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char + VARIATION_SELECTOR_16)


def caption(cp: int) -> str:
    """The glyph's CLDR short name, e.g. 0x2764 -> "red heart", 0x1F604 -> "grinning face with smiling eyes"."""
    entry = cldr_entry(cp)
    if entry is not None:
        return entry["en"].strip(":").replace("_", " ")  # ':red_heart:' -> 'red heart'
    return unicodedata.name(chr(cp), f"u+{cp:04x}").lower()


def keywords(cp: int) -> list[str]:
    """Other names the package knows for the glyph (GitHub-style aliases such as 'heart'), without its caption."""
    entry = cldr_entry(cp) or {}
    names = (a.strip(":").replace("_", " ") for a in entry.get("alias", []))
    return [n for n in dict.fromkeys(names) if n != caption(cp)]
