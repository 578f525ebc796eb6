"""The emoji data set, rendered from Debian's fonts-noto-color-emoji."""

import numpy as np
import pytest

from diffusion import emoji
from helpers import require_prerequisite


@pytest.fixture(scope="module")
def arrays():
    require_prerequisite("emoji-font")
    return emoji.build(emoji.DEFAULT_FONT, 32)


def test_about_1400_glyphs_split_90_10(arrays):
    n_train, n_held = len(arrays["train"]), len(arrays["heldout"])
    assert 1200 <= n_train + n_held <= 1700
    assert abs(n_held / (n_train + n_held) - 0.1) < 0.005
    assert arrays["train"].shape[1:] == (32, 32, 3) and arrays["train"].dtype == np.uint8
    assert not set(arrays["train_codepoints"]) & set(arrays["heldout_codepoints"])


def test_excluded_codepoints_are_absent(arrays):
    cps = set(arrays["train_codepoints"]) | set(arrays["heldout_codepoints"])
    for lo, hi in emoji.EXCLUDED:
        assert not any(lo <= cp <= hi for cp in cps), hex(lo)
    assert 0x1F600 in cps  # grinning face


def test_glyphs_are_centred_and_colourful_on_white(arrays):
    images = arrays["train"].astype(int)
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    assert (border.min(axis=-1) >= 240).mean() > 0.8  # mostly white margins
    centre = images[:, 12:20, 12:20]
    assert (centre.min(axis=-1) < 200).mean() > 0.6  # ink in the middle
    saturation = images.max(axis=-1) - images.min(axis=-1)
    assert (saturation > 60).mean() > 0.15


def test_the_split_is_deterministic():
    require_prerequisite("emoji-font")
    a, b = emoji.build(size=8), emoji.build(size=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_missing_font_names_the_package(tmp_path):
    with pytest.raises(emoji.FontMissing, match="fonts-noto-color-emoji"):
        emoji.build(tmp_path / "nope.ttf")


def test_every_glyph_has_its_cldr_short_name_as_caption(arrays):
    captions = dict(zip(arrays["train_codepoints"].tolist(), arrays["train_captions"].tolist(), strict=True))
    captions |= dict(zip(arrays["heldout_codepoints"].tolist(), arrays["heldout_captions"].tolist(), strict=True))
    assert captions[0x2764] == "red heart"  # not Unicode's "HEAVY BLACK HEART"
    assert captions[0x1F431] == "cat face"
    assert captions[0x1F604] == "grinning face with smiling eyes"
    assert all(c and c == c.strip() for c in captions.values())
    assert len(set(captions.values())) > 0.95 * len(captions)
    assert arrays["train_captions"].dtype.kind == "U"  # loads without pickle


def test_captions_leave_the_split_as_it_was(arrays):
    """The split is the same permutation of the same glyphs, so KID figures stay comparable."""
    from diffusion.captions import caption

    assert [caption(cp) for cp in arrays["heldout_codepoints"].tolist()] == arrays["heldout_captions"].tolist()
    order = np.random.default_rng(emoji.SPLIT_SEED).permutation(len(arrays["train"]) + len(arrays["heldout"]))
    n_held = len(arrays["heldout"])
    everything = np.sort(np.concatenate([arrays["train_codepoints"], arrays["heldout_codepoints"]]))
    assert np.array_equal(np.sort(everything[order[:n_held]]), arrays["heldout_codepoints"])
