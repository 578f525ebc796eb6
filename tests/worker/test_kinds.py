"""The engine runs any registered kind through one interface: the test-only `toy-linear` kind, in process."""

import numpy as np
import pytest
import torch
import toy_kind  # registers the kind
from toy_kind_engine import ToyConfig, alpha_bar, save_toy

from app.core.png import decode_png, encode_png
from diffusion.ddim import ddim_step
from helpers import copy_version, generate_spec
from model_store import ModelStoreError
from worker.engine import load_engine


@pytest.fixture
def toy_store(tiny_store):
    save_toy(tiny_store, "toy")
    return tiny_store


def test_a_toy_kind_runs_on_the_engine_with_its_own_grid_parameterisation_and_pixels(toy_store):
    engine = load_engine("toy", toy_store, device="cpu")
    assert engine.shape == (1, 6, 10)  # grey, non-square
    images = engine.generate([3, 4], 4, [0.0, 0.5])
    assert images.shape == (2, 6, 10, 1) and images.dtype == np.uint8
    # the same run by hand: x_T from the seed, the toy's x0 = 0.6 x + 0.3 t, DDIM eq. 12 on its alpha-bars
    x = torch.randn((1, 6, 10), generator=torch.Generator().manual_seed(3))[None]
    for k in range(4):
        t = 1 - k / 4
        x0 = 0.6 * x + 0.3 * t
        eps = (x - alpha_bar(t) ** 0.5 * x0) / (1 - alpha_bar(t)) ** 0.5
        x, x0 = ddim_step(x, eps, alpha_bar(t), alpha_bar(t - 1 / 4), 0.0, x0=x0)
    expected = torch.round(((x0 / 2 + 0.5).clamp(0, 1)) * 255).to(torch.uint8)[0, 0].numpy()
    assert np.abs(images[0, :, :, 0].astype(int) - expected.astype(int)).max() <= 1
    assert images[0].std() > 0


def test_a_toy_row_is_the_same_in_any_batch(toy_store):
    engine = load_engine("toy", toy_store, device="cpu")
    alone = engine.generate([7], 5, [0.7])[0]
    together = engine.generate([1, 7, 2], 5, [0.0, 0.7, 1.0])[1]
    assert np.array_equal(alone, together)


def test_a_grey_image_is_an_l_png_with_its_parameters(toy_store):
    engine = load_engine("toy", toy_store, device="cpu")
    png = encode_png(engine.generate([1], 3, [0.0])[0], engine.parameters(generate_spec(engine.manifest, 1, 3, 0.0)))
    assert png[25] == 0  # IHDR colour type 0: greyscale
    assert decode_png(png).shape == (6, 10, 3)


def test_an_unknown_kind_is_refused_at_load_with_one_line_naming_it(tiny_store):
    copy_version(tiny_store, "tiny", 1, kind="mystery-net")
    with pytest.raises(ModelStoreError) as info:
        load_engine("tiny@2", tiny_store, device="cpu")
    assert "\n" not in str(info.value) and "unknown model kind 'mystery-net'" in str(info.value)


def test_a_stored_but_not_served_kind_is_refused_at_load(tiny_store):
    from toy_kind_engine import ToyNet

    from model_store.weights import save_model

    save_model(tiny_store, "feats", ToyNet(ToyConfig()), "none", [0.0], [1.0], {}, kind="feature-cnn")
    with pytest.raises(ModelStoreError, match="'feature-cnn', which is stored but not served"):
        load_engine("feats", tiny_store, device="cpu")


def test_the_worker_finds_each_served_kind_s_class_by_its_own_rule():
    """Built-in kinds from the worker's own modules; a plug-in kind from `MODELS` of `<its module>_engine`."""
    from toy_kind_engine import ToyLinear

    from model_store import kinds
    from worker.kinds import model_class

    assert model_class(kinds.get("ddim-unet")).__name__ == "DDIMUNet"
    assert model_class(kinds.get("toy-linear")) is ToyLinear
    orphan = kinds.Kind("orphan", toy_kind.shape, served=True, module="no_such_kinds")
    with pytest.raises(ModelStoreError) as info:
        model_class(orphan)
    assert "\n" not in str(info.value) and "'orphan': cannot load no_such_kinds_engine" in str(info.value)
    stray = kinds.Kind("stray", toy_kind.shape, served=True, module="toy_kind")
    with pytest.raises(ModelStoreError, match=r"'stray': toy_kind_engine\.MODELS has no 'stray'"):
        model_class(stray)
