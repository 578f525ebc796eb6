"""Shared fixtures: tiny models in a temporary store."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_tiny_net


@pytest.fixture
def tiny_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store holding `tiny@1`, made the default store and model for this test and its subprocesses."""
    from model_store import Store
    from model_store.weights import save_model

    store = Store(tmp_path / "models")
    save_model(store, "tiny", make_tiny_net(), "offset_cosine", [0.5, 0.45, 0.4], [0.25, 0.2, 0.3], {"steps": 0})
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    monkeypatch.setenv("DIFFUSETV_MODEL", "tiny")
    return store
