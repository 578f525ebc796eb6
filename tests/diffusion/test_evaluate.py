"""Evaluation: samples in seeded batches, the reference sets, and the KID table built from them."""

import json

import numpy as np
import pytest

from diffusion.evaluate import (
    FLOOR,
    MODEL,
    NOISE,
    UNTRAINED,
    evaluate,
    format_table,
    generate_in_batches,
    noise_images,
    untrained_generator,
)
from helpers import TINY


def discs(n, seed, size=16):
    """Coloured discs on white: a stand-in data set."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.full((n, size, size, 3), 255, dtype=np.uint8)
    for img in images:
        cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(3, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 200, 3)
    return images


def pooled_pixels(images):
    """A plain feature map for tests: 4x4 average-pooled pixels in [0, 1], 48 dims."""
    n, h, w, c = images.shape
    return images.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1) / 255.0


def test_generation_runs_seeds_in_order_in_batches():
    calls = []

    def generate(seeds):
        calls.append(list(seeds))
        return np.stack([np.full((2, 2, 3), s, dtype=np.uint8) for s in seeds])

    images = generate_in_batches(generate, 150, batch_size=64, progress=False)
    assert [len(c) for c in calls] == [64, 64, 22]
    assert [s for c in calls for s in c] == list(range(150))
    assert images[:, 0, 0, 0].tolist() == list(range(150))


def test_noise_images_are_seeded_uniform_bytes():
    a = noise_images(200, 16, seed=3)
    assert a.shape == (200, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, noise_images(200, 16, seed=3))
    assert not np.array_equal(a, noise_images(200, 16, seed=4))
    assert abs(a.mean() - 127.5) < 2 and a.min() == 0 and a.max() == 255


def test_an_untrained_network_gives_saturated_colour_noise():
    config = {"image_size": 16, "channels": 3, "widths": list(TINY["widths"]), "block_depth": TINY["block_depth"]}
    generate = untrained_generator(config, [0.5, 0.5, 0.5], [0.3, 0.3, 0.3], "offset_cosine", steps=3, seed=0)
    a = generate([0, 1, 2])
    again = untrained_generator(config, [0.5, 0.5, 0.5], [0.3, 0.3, 0.3], "offset_cosine", steps=3, seed=0)([0, 1, 2])
    assert a.shape == (3, 16, 16, 3) and np.array_equal(a, again)
    # Its zero output layer predicts no noise, so x0 = x_T / 0.02: almost every value is clipped.
    assert np.isin(a, (0, 255)).mean() > 0.95


def run(generate_model, n=40):
    train, heldout = discs(200, seed=1), discs(60, seed=2)
    return evaluate(
        generate_model,
        lambda seeds: noise_images(len(seeds), 16, seed=seeds[0] + 1000),
        pooled_pixels,
        train,
        heldout,
        n,
        subsets=20,
        progress=False,
    )


def test_a_model_that_makes_the_data_passes():
    pool = discs(100, seed=5)
    result = run(lambda seeds: pool[list(seeds)])
    assert [r.key for r in result.rows] == [MODEL, FLOOR, NOISE, UNTRAINED]
    assert [r.n for r in result.rows] == [40, 200, 40, 40]
    assert [r.kid.subset_size for r in result.rows] == [40, 60, 40, 40]  # min(1000, n, 60 held-out)
    floor, model, noise = result.row(FLOOR).kid, result.row(MODEL).kid, result.row(NOISE).kid
    assert abs(floor.kid) < 0.05 and abs(model.kid) < 0.05
    assert noise.low > 1.0
    assert result.model_passes
    table = format_table(result)
    assert "train split (floor)" in table and "below noise: yes; below untrained network: yes" in table
    figures = json.loads(json.dumps(result.to_json()))
    assert figures["model_below_noise"] and len(figures["rows"]) == 4 and figures["heldout"] == 60


def test_a_model_that_makes_noise_fails():
    result = run(lambda seeds: noise_images(len(seeds), 16, seed=seeds[0] + 7))
    assert not result.model_passes
    assert "below noise: NO" in format_table(result)


def test_a_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="images"):
        run(lambda seeds: np.zeros((len(seeds), 8, 8, 3), dtype=np.uint8))
