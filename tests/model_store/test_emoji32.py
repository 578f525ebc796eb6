"""The bundled default model, emoji32: verified, small, quick to load, and its samples look like emoji."""

import time

import numpy as np
import pytest

from diffusion import emoji
from helpers import require_prerequisite
from model_store import Store
from model_store.store import BUNDLED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    require_prerequisite("emoji-font")
    return emoji.build(emoji.DEFAULT_FONT, 32)


@pytest.fixture(scope="module")
def samples():
    from worker.engine import load_engine

    engine = load_engine("emoji32", Store(BUNDLED), device="cpu")
    return engine.generate(list(range(16)), 50, [0.0] * 16)


def test_committed_model_verifies_loads_fast_and_is_small():
    store = Store(BUNDLED)
    manifest = store.verify("emoji32")
    assert manifest.ref == "emoji32@1" and manifest.kind == "ddim-unet"
    assert manifest.weights_path.suffix == ".safetensors"
    assert manifest.weights_path.stat().st_size < 20 * 1024 * 1024
    assert manifest.config["widths"] == [32, 64, 96, 128] and manifest.config["block_depth"] == 2
    assert manifest.training["steps"] > 0 and manifest.training["recipe"]["command"].startswith("diffusetv train")
    from model_store.weights import load_model

    started = time.perf_counter()
    load_model(store.resolve("emoji32"))
    assert time.perf_counter() - started < 1.0


def white_border_share(images: np.ndarray) -> float:
    """Share of border pixels that are near white (every channel >= 230)."""
    border = np.concatenate(
        [
            images[:, :2].reshape(len(images), -1, 3),
            images[:, -2:].reshape(len(images), -1, 3),
            images[:, :, :2].reshape(len(images), -1, 3),
            images[:, :, -2:].reshape(len(images), -1, 3),
        ],
        axis=1,
    )
    return float((border.min(axis=-1) >= 230).mean())


def neighbour_difference(images: np.ndarray) -> float:
    """Mean absolute difference between horizontally and vertically neighbouring pixels."""
    x = images.astype(np.float64)
    return float((np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()) / 2)


def nearest_l1(queries: np.ndarray, pool: np.ndarray) -> float:
    """Mean over queries of the mean-absolute-pixel distance to the nearest image of the pool."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    p = pool.reshape(len(pool), -1).astype(np.float64)
    return float(np.mean([np.abs(p - row).mean(axis=1).min() for row in q]))


def test_samples_look_like_emoji(data, samples):
    train = data["train"]
    noise = np.random.default_rng(0).integers(0, 256, samples.shape, dtype=np.uint8)
    assert abs(white_border_share(samples) - white_border_share(train)) <= 0.2
    ratio = neighbour_difference(samples) / neighbour_difference(train)
    noise_ratio = neighbour_difference(noise) / neighbour_difference(train)
    assert 0.5 <= ratio <= 2.0, ratio
    assert noise_ratio > 2.0, "the measure must be able to tell noise apart"
    saturation = samples.max(axis=-1).astype(int) - samples.min(axis=-1)
    assert (saturation > 60).mean() > 0.05, "colourful"


def test_samples_are_not_copies_of_the_training_set(data, samples):
    heldout_distance = nearest_l1(data["heldout"], data["train"])
    assert nearest_l1(samples, data["train"]) >= 0.5 * heldout_distance
