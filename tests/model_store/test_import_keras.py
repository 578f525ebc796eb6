"""`diffusetv import keras`: a checkpoint of the Keras DDIM example, written by Keras itself (torch backend),
read with h5py alone, and served as a `ddim-unet` with the example's outputs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
pytest.importorskip("h5py")
pytest.importorskip("keras")

import h5py
import keras_ddim_example as example

from diffusion.ddim import last_step
from helpers import run_cli
from model_store import ModelStoreError, Store
from model_store.importers.keras import import_keras
from model_store.weights import load_model
from worker.engine import load_engine

keras = example.keras
STEPS = 20
MAX_SATURATION = 0.35


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras")
    path = folder / "ddim.weights.h5"
    model = example.trained_checkpoint(path)
    return path, model


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "models")


def keras_noise(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16, 16, 3)).astype("float32")


def test_the_layout_is_the_one_the_importer_reads(checkpoint):
    path, _ = checkpoint
    with h5py.File(path) as f:
        assert {"layers", "ema_network"} <= set(f)
        assert set(f["layers/normalization/vars"]) == {"0", "1", "2"}
        ema = f["ema_network/layers"]
        # the first block: BN over stem + embedding (8 + 32), its two 3x3 convolutions, then the 1x1 shortcut
        assert ema["conv2d_1/vars/0"].shape == (3, 3, 40, 8) and ema["conv2d_3/vars/0"].shape == (1, 1, 40, 8)
        assert ema["batch_normalization/vars/0"].shape == (40,)


def test_the_inferred_unet_and_its_statistics(checkpoint, store):
    path, model = checkpoint
    m = import_keras(path, "kerasnet", image_size=16, store=store)
    assert (m.kind, m.schedule) == ("ddim-unet", "offset_cosine")
    assert m.config["widths"] == [8, 16, 24] and m.config["block_depth"] == 2 and m.config["embedding_dims"] == 32
    mean = keras.ops.convert_to_numpy(model.normalizer.mean).reshape(-1)
    variance = keras.ops.convert_to_numpy(model.normalizer.variance).reshape(-1)
    assert np.allclose(m.mean, mean, rtol=1e-6) and np.allclose(m.std, np.sqrt(variance), rtol=1e-6)


def test_the_network_gives_the_examples_output(checkpoint, store):
    path, model = checkpoint
    net = load_model(import_keras(path, "kerasnet", image_size=16, store=store))
    x = keras_noise(6)
    v = np.linspace(0.01, 0.99, 6, dtype=np.float32).reshape(6, 1, 1, 1)  # noise variances
    theirs = keras.ops.convert_to_numpy(model.ema_network([x, v], training=False))
    with torch.no_grad():
        ours = net(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(v)).permute(0, 2, 3, 1).numpy()
    relative = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    assert relative <= 1e-4, relative
    assert np.abs(theirs).max() > 0.5  # not the zero-initialised head


@pytest.mark.parametrize("rates", [(0.02, 0.95), (0.05, 0.9)])
def test_a_20_step_generate_from_the_same_noise_is_the_examples(checkpoint, store, monkeypatch, rates):
    path, model = checkpoint
    monkeypatch.setattr(example, "min_signal_rate", rates[0])
    monkeypatch.setattr(example, "max_signal_rate", rates[1])
    m = import_keras(path, "kerasnet", 16, min_signal_rate=rates[0], max_signal_rate=rates[1], store=store)
    engine = load_engine(m.ref, store=store, device="cpu")
    noise = keras_noise(4, seed=2)
    theirs = keras.ops.convert_to_numpy(model.generate_from(keras.ops.convert_to_tensor(noise), STEPS))
    want = np.round(theirs * 255).astype(np.uint8)  # (B, H, W, 3) in [0, 1] -> the PNG's quantisation
    x_T = torch.from_numpy(noise).permute(0, 3, 1, 2).contiguous()
    last = last_step(engine.run([0, 1, 2, 3], STEPS, [0.0] * 4, starts=x_T))
    ours = engine.pixels(engine.model.final(last))
    assert np.abs(ours.astype(int) - want.astype(int)).max() <= 2
    floats = np.clip(last.x0_pred.permute(0, 2, 3, 1).numpy() * np.array(m.std) + np.array(m.mean), 0, 1)
    assert np.abs(floats - theirs).max() < 2e-3
    saturated = float(((want == 0) | (want == 255)).mean())
    assert saturated < MAX_SATURATION and want.std() > 10 and len(np.unique(want)) > 50, saturated


def broken_copy(path, tmp_path, edit) -> object:
    copy = tmp_path / "broken.weights.h5"
    shutil.copy(path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def test_a_layer_that_does_not_fit_is_named(checkpoint, tmp_path, store):
    path, _ = checkpoint

    def widen(f):
        del f["ema_network/layers/conv2d_5/vars/0"]
        f["ema_network/layers/conv2d_5/vars"].create_dataset("0", data=np.zeros((3, 3, 8, 9), "float32"))

    with pytest.raises(ModelStoreError, match="layer conv2d_5 has a") as err:
        import_keras(broken_copy(path, tmp_path, widen), "broken", 16, store=store)
    assert "\n" not in str(err.value) and store.versions("broken") == []


def test_a_file_without_the_ema_or_the_normalization_is_refused(checkpoint, tmp_path, store):
    path, _ = checkpoint
    copy = broken_copy(path, tmp_path, lambda f: f.__delitem__("ema_network"))
    with pytest.raises(ModelStoreError, match="no ema_network/layers group"):
        import_keras(copy, "broken", 16, store=store)
    copy = broken_copy(path, tmp_path, lambda f: f.__delitem__("layers/normalization"))
    with pytest.raises(ModelStoreError, match="no layers/normalization/vars group"):
        import_keras(copy, "broken", 16, store=store)


def test_a_tensorflow_checkpoint_is_refused_with_the_conversion(tmp_path, store):
    ckpt = tmp_path / "checkpoints" / "diffusion_model.index"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not hdf5")
    with pytest.raises(ModelStoreError, match=r"save_weights\('….weights.h5'\) under Keras 3"):
        import_keras(ckpt, "tf", 16, store=store)


def test_an_image_size_that_does_not_fit_the_levels_is_refused(checkpoint, store):
    path, _ = checkpoint
    with pytest.raises(ModelStoreError, match="divisible"):
        import_keras(path, "odd", 18, store=store)


def test_the_cli_imports_it(checkpoint, tmp_path):
    path, _ = checkpoint
    env = {"DIFFUSETV_MODEL_STORE": str(tmp_path / "cli-store")}
    out = run_cli("import", "keras", str(path), "--name", "fromkeras", "--image-size", "16", env=env)
    assert "imported fromkeras@1 (ddim-unet, widths [8, 16, 24], block depth 2" in out.stdout
    bad = run_cli(
        "import",
        "keras",
        str(path),
        "--name",
        "x",
        "--image-size",
        "16",
        "--min-signal-rate",
        "0.99",
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and "0 < min < max < 1" in bad.stderr
