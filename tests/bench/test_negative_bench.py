"""`python -m bench negative`: the dominant hue of an image and what counts as red, against their definitions."""

import colorsys
import json

import numpy as np
import pytest

from bench.negative import dominant_hue, format_result, is_red


def flat(rgb, size=4) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (size, size, 3)).copy()


@pytest.mark.parametrize("rgb", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 40), (90, 30, 200), (250, 10, 60)])
def test_the_hue_of_a_flat_colour_is_its_hsv_hue(rgb):
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    assert saturation > 0.35 and value > 0.25
    assert dominant_hue(flat(rgb)) == pytest.approx(hue * 360, abs=1e-9)


def test_the_mean_is_circular_and_dull_pixels_are_left_out():
    image = np.concatenate([flat((255, 0, 20)), flat((255, 20, 0))])  # hues 355.3° and 4.7°: red, not cyan
    assert min(dominant_hue(image), 360 - dominant_hue(image)) < 1e-9
    grey, dark, pale = flat((128, 128, 128)), flat((60, 0, 0)), flat((255, 200, 200))  # s 0, v 0.24, s 0.22
    assert dominant_hue(np.concatenate([grey, dark, pale])) is None
    assert dominant_hue(np.concatenate([grey, dark, pale, flat((0, 0, 255))])) == pytest.approx(240)
    assert dominant_hue(np.zeros((2, 2, 3), np.uint8)) is None


@pytest.mark.parametrize(
    ("hue", "red"), [(0.0, True), (25.0, True), (335.0, True), (359.9, True), (25.1, False), (334.9, False),
                     (120.0, False), (None, False)]
)  # fmt: skip
def test_red_is_within_25_degrees_of_0(hue, red):
    assert is_red(hue) is red


def test_the_report_is_a_table_and_a_json_line():
    result = {
        "model": "emoji32-text@1", "prompt": "heart", "negative_prompt": "red", "guidance": 3.0, "steps": 50,
        "seeds": list(range(16)), "threads": 2, "red": {"none": 10, "red": 4},
    }  # fmt: skip
    text = format_result(result)
    assert "10/16" in text and "4/16" in text and "met" in text
    assert json.loads(text.splitlines()[-1]) == {
        "model": "emoji32-text@1", "steps": 50, "seeds": 16, "red": {"none": 10, "red": 4}, "met": True,
    }  # fmt: skip
