"""Feature extractors: the exemplar CNN (deterministic, kept in the store) and the guarded InceptionV3."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from diffusion import emoji
from diffusion.evaluate import noise_images
from diffusion.features import (
    CNNExtractor,
    FeatureError,
    augment,
    inception_extractor,
    train_feature_extractor,
)
from diffusion.kid import kid
from helpers import require, require_prerequisite
from model_store import Store
from model_store.features import load_extractor
from model_store.store import BUNDLED

SMALL = {"batch_size": 16, "widths": (8, 16)}  # a fast network for the tests that do not need it to learn


@pytest.fixture(scope="module")
def discs():
    """Coloured discs on white, 16x16: a stand-in training split."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images = np.full((24, 16, 16, 3), 255, dtype=np.uint8)
    for img in images:
        cy, cx, r = rng.integers(5, 11), rng.integers(5, 11), rng.integers(3, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 200, 3)
    return images


def test_augmentation_is_seeded_and_fills_with_white():
    white = torch.ones(8, 3, 16, 16)
    a = augment(white, torch.Generator().manual_seed(0))
    b = augment(white, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert a.mean() > 0.98  # shifted, scaled, tinted white is still white, give or take the pixel noise
    black = torch.zeros(8, 3, 16, 16)
    shifted = augment(black, torch.Generator().manual_seed(0))
    assert shifted[:, :, 6:10, 6:10].mean() < 0.2  # the centre stays dark (gain 0.85..1.15 about white)


def test_training_is_deterministic_and_learns(discs):
    losses = []
    kw = {"batch_size": 32, "learning_rate": 1e-2, "widths": (16, 32)}
    a = train_feature_extractor(discs, 80, seed=1, **kw, progress=lambda step, loss: losses.append(loss))
    b = train_feature_extractor(discs, 80, seed=1, **kw)
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert len(losses) == 80 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])  # from about ln(24) = 3.2
    assert a.config.classes == len(discs) and not a.training


def test_extraction_is_deterministic_and_does_not_depend_on_the_batch(discs):
    extractor = CNNExtractor(train_feature_extractor(discs, 2, seed=0, **SMALL), batch_size=5)
    features = extractor.extract(discs)
    assert features.shape == (len(discs), 16) and features.dtype == np.float64
    assert np.array_equal(features, extractor.extract(discs))
    alone = CNNExtractor(extractor.net, batch_size=64).extract(discs)
    np.testing.assert_allclose(features, alone, rtol=0, atol=1e-6)
    assert (features >= 0).all()  # post-ReLU pooled features


def test_inception_needs_torchvision_and_its_weights_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FeatureError, match="nothing is downloaded") as info:
        inception_extractor()
    assert "torchvision" in str(info.value)
    with pytest.raises(FeatureError, match="nothing is downloaded"):
        load_extractor("inception")


@pytest.fixture(scope="module")
def emoji32():
    require_prerequisite("emoji-font")
    return emoji.build(emoji.DEFAULT_FONT, 32)


def blur(images, radius=1.5):
    return np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(radius))) for i in images])


def test_the_committed_extractor_separates_the_reference_figures(emoji32):
    require("emoji32-features" in Store(BUNDLED).names(), "needs the bundled emoji32-features extractor")
    extract = load_extractor("emoji32-features", Store(BUNDLED)).extract
    heldout = extract(emoji32["heldout"])
    floor = kid(extract(emoji32["train"]), heldout, subsets=50)
    blurred = kid(extract(blur(emoji32["heldout"])), heldout, subsets=50)
    noise = kid(extract(noise_images(500, 32, seed=0)), heldout, subsets=50)
    assert abs(floor.kid) < 0.1  # train and held-out glyphs come from one distribution
    assert blurred.low > floor.high + 1.0  # blur is seen
    assert noise.low > 50 * blurred.high  # noise is nothing like an emoji
