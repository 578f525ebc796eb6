"""Captions from CLDR short names, with Unicode names only as the fallback."""

from diffusion.captions import caption, keywords


def test_cldr_short_names_not_unicode_character_names():
    assert caption(0x2764) == "red heart"  # Unicode: HEAVY BLACK HEART
    assert caption(0x263A) == "smiling face"  # Unicode: WHITE SMILING FACE
    assert caption(0x1F550) == "one o’clock"  # CLDR's own apostrophe; prompts fold it


def test_a_glyph_without_cldr_data_falls_back_to_its_unicode_name():
    assert caption(0x1F1E6) == "regional indicator symbol letter a"


def test_keywords_are_the_other_names():
    assert "heart" in keywords(0x2764) and "red heart" not in keywords(0x2764)
