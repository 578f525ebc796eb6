"""The text model's evaluation (diffusion.prompt_eval): retrieval ranks, colour words and hues, the whole run."""

import numpy as np
import pytest

from diffusion.prompt_eval import (
    colour_adherence,
    colour_word,
    dominant_hue,
    evaluate_prompts,
    hue_name,
    nearest_ranks,
    subset,
    top_k,
)


def test_ranks_count_the_glyphs_strictly_nearer_than_the_target():
    glyphs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    samples = np.array([[0.1, 0.0], [0.9, 0.1], [4.0, 4.0]])
    ranks = nearest_ranks(samples, glyphs, [0, 2, 1])
    assert ranks.tolist() == [0, 2, 2]  # sample 1: glyphs 1 and 0 are nearer than 2; sample 2: 3 and 2 than 1
    assert top_k(ranks, 1) == pytest.approx(1 / 3) and top_k(ranks, 3) == 1.0


def test_colour_words_and_hues():
    assert colour_word("Red Heart") == "red" and colour_word("green apple") == "green"
    assert colour_word("cat face") is None and colour_word("red and blue") is None  # none, or two
    assert [hue_name(h) for h in (0, 350, 20, 50, 120, 200, 280)] == [
        "red", "red", "orange", "yellow", "green", "blue", "purple",
    ]  # fmt: skip
    assert all(hue_name(h) for h in range(360))  # the ranges cover the whole circle
    assert hue_name(320) == "pink"


def image(rgb, background=(255, 255, 255), share=0.3):
    img = np.full((32, 32, 3), background, dtype=np.uint8)
    img[: int(32 * share)] = rgb
    return img


def test_the_dominant_hue_ignores_the_white_background_and_grey():
    assert hue_name(dominant_hue(image((220, 30, 40)))) == "red"
    assert hue_name(dominant_hue(image((40, 80, 230), share=0.1))) == "blue"  # a small blue shape on white
    assert dominant_hue(image((128, 128, 128))) is None
    results = colour_adherence(
        np.stack([image((220, 30, 40)), image((220, 30, 40)), image((30, 200, 60))]),
        ["red heart", "blue circle", "cat face"],
    )
    assert [(r.word, r.seen, r.matches) for r in results] == [("red", "red", True), ("blue", "red", False)]


def test_the_subset_is_seeded_and_sorted():
    assert subset(1260, 200, 0) == subset(1260, 200, 0) != subset(1260, 200, 1)
    assert len(subset(1260, 200, 0)) == 200 and subset(1260, 200, 0) == sorted(subset(1260, 200, 0))
    assert subset(5, 200, 0) == [0, 1, 2, 3, 4]


def test_a_model_that_draws_the_captioned_glyph_scores_top_1_and_one_that_ignores_it_does_not():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(30, 3))
    glyphs = np.stack([image(tuple(int(v) for v in c)) for c in colours])
    train, heldout = glyphs[:24], glyphs[24:]
    names = [f"glyph {i}" for i in range(30)]

    def extract(images):
        return images.reshape(len(images), -1).astype(np.float64)

    def faithful(captions, seeds):
        return np.stack([glyphs[int(c.split()[1])] for c in captions])

    def blind(captions, seeds):
        return np.stack([glyphs[0]] * len(captions))

    good = evaluate_prompts(faithful, extract, train, heldout, names[:24], names[24:], train_subset=10, subsets=5)
    assert good["train"] == {"captions": 10, "top1": 1.0, "top5": 1.0}
    assert good["heldout"]["top1"] == 1.0 and good["prompted_kid"]["kid"] < 0.5
    prompted = good["prompted_kid"]
    assert prompted["subset_size"] == 3 and prompted["low"] < prompted["high"], prompted  # half of 6: a real interval
    bad = evaluate_prompts(blind, extract, train, heldout, names[:24], names[24:], train_subset=10, subsets=5)
    assert bad["heldout"]["top1"] == 0.0 and bad["train"]["top5"] <= 0.5
