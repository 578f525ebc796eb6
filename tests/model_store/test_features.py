"""A feature CNN in the store: published and verified like a model, and never mistaken for one."""

import numpy as np
import pytest

from diffusion.features import CNNExtractor, train_feature_extractor
from model_store import ModelStoreError, Store
from model_store.features import FEATURE_KIND, load_extractor, load_feature_net, save_feature_net
from model_store.weights import load_model
from worker.engine import load_engine


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def feature_store(tmp_path, images):
    store = Store(tmp_path / "models")
    net = train_feature_extractor(images, 2, seed=0, batch_size=8, widths=(8, 16))
    save_feature_net(store, "feats", net, {"steps": 2, "seed": 0})
    return store, net


def test_saved_features_load_verified_and_give_the_same_features(feature_store, images):
    store, net = feature_store
    manifest = store.verify("feats")
    assert (manifest.ref, manifest.kind, manifest.schedule) == ("feats@1", FEATURE_KIND, "none")
    assert manifest.config == {"classes": 12, "widths": [8, 16], "image_size": 16}
    assert manifest.mean == pytest.approx(net.mean.flatten().tolist())
    loaded = load_feature_net(manifest)
    assert np.array_equal(CNNExtractor(loaded).extract(images), CNNExtractor(net).extract(images))
    extractor = load_extractor("feats", store)
    assert extractor.name == "feats@1" and extractor.extract(images).shape == (12, 16)


def test_a_flipped_byte_fails_loading_naming_the_file(feature_store):
    store, _ = feature_store
    manifest = store.resolve("feats")
    data = bytearray(manifest.weights_path.read_bytes())
    data[-1] ^= 0x01
    manifest.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="sha256 mismatch") as info:
        load_feature_net(manifest)
    assert str(manifest.weights_path) in str(info.value)
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        store.verify("feats")


def test_the_kind_keeps_features_and_unets_apart(feature_store, tiny_store):
    store, _ = feature_store
    with pytest.raises(ModelStoreError, match="'feature-cnn', not 'ddim-unet'"):
        load_model(store.resolve("feats"))
    with pytest.raises(ModelStoreError, match=r"kind .feature-cnn., which is stored but not served"):
        load_engine("feats", store=store, device="cpu")
    with pytest.raises(ModelStoreError, match="'ddim-unet', not 'feature-cnn'"):
        load_feature_net(tiny_store.resolve("tiny"))
