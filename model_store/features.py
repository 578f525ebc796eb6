"""Feature extractors for evaluation, kept in the store beside the models and verified like them.

A feature CNN is a model of kind `feature-cnn`: its manifest holds the CNN's config, schedule "none",
the normalisation it applies and its training record, and its weights are loaded only after their
sha256 matches. Imports torch: only the CLI uses this.
"""

from __future__ import annotations

import torch

from diffusion.features import CNNExtractor, Extractor, FeatureCNN, FeatureConfig, inception_extractor
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.store import Store
from model_store.weights import read_state, save_model

FEATURE_KIND = "feature-cnn"
INCEPTION = "inception"


def save_feature_net(store: Store, name: str, net: FeatureCNN, training: dict) -> Manifest:
    """Publish a trained feature CNN as the next version of `name`."""
    mean, std = net.mean.flatten().tolist(), net.std.flatten().tolist()
    return save_model(store, name, net, "none", mean, std, training, kind=FEATURE_KIND)


def load_feature_net(manifest: Manifest, device: str | torch.device = "cpu") -> FeatureCNN:
    """Build the CNN from the manifest's config and load its verified weights, in eval mode."""
    state = read_state(manifest, FEATURE_KIND)
    try:
        net = FeatureCNN(FeatureConfig.from_dict(manifest.config), manifest.mean, manifest.std)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, KeyError) as exc:
        raise ModelStoreError(f"{manifest.weights_path}: weights do not fit the config ({exc})") from None
    return net.to(device).eval()


def load_extractor(spec: str, store: Store | None = None) -> Extractor:
    """`inception`, or a feature CNN in the store by reference (`name` or `name@version`)."""
    if spec == INCEPTION:
        return inception_extractor()
    manifest = (store or Store()).resolve(spec)
    return CNNExtractor(load_feature_net(manifest), name=manifest.ref)
