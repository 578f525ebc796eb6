"""Versioned model files on disk: `models/<name>/<version>/{model.json, ema.safetensors}`.

Listing, references and verification are torch-free; `weights` imports torch when it is used.
"""

from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.refs import parse_ref
from model_store.store import Store, user_root

__all__ = ["Manifest", "ModelStoreError", "Store", "parse_ref", "user_root"]
