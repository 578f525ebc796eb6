"""The probe cache: a second load on the same machine takes the cached probe after one confirming call."""

from __future__ import annotations

import json

import numpy as np
import torch

from diffusion import probe_cache
from worker.engine import load_engine


def count_probes(monkeypatch) -> list[int]:
    calls = []
    real = probe_cache.probe

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe_cache, "probe", counted)
    return calls


def test_a_second_load_uses_the_cached_probe_and_gives_the_same_bytes(tiny_store, tmp_path, monkeypatch):
    calls = count_probes(monkeypatch)
    cache = tmp_path / "probes"
    first = load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    assert len(calls) == 1 and not first.denoiser.cached and len(list(cache.glob("*.json"))) == 1
    second = load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    assert len(calls) == 1 and second.denoiser.cached
    assert second.probe == first.probe and second.id == first.id
    assert np.array_equal(second.generate([4, 5], 3, [0.0, 1.0]), first.generate([4, 5], 3, [0.0, 1.0]))


def test_an_entry_that_no_longer_holds_is_probed_again(tiny_store, tmp_path, monkeypatch):
    calls = count_probes(monkeypatch)
    cache = tmp_path / "probes"
    first = load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    (entry,) = cache.glob("*.json")
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "fingerprint": "0" * 64}))  # other arithmetic than this machine's
    again = load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    assert len(calls) == 2 and not again.denoiser.cached and again.probe == first.probe
    assert json.loads(entry.read_text())["fingerprint"] == first.probe.fingerprint
    entry.write_text("{not json")
    load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    assert len(calls) == 3


def test_the_key_holds_threads_precision_and_the_model(tiny_store, tmp_path):
    cache = tmp_path / "probes"
    load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    previous = torch.get_num_threads()
    torch.set_num_threads(previous + 1)
    try:
        load_engine("tiny", tiny_store, "cpu", probe_cache=cache)
    finally:
        torch.set_num_threads(previous)
    assert len(list(cache.glob("*.json"))) == 2
    key = probe_cache.machine_key("cpu")
    assert {"torch", "build", "threads", "cpu", "mkldnn"} <= set(key) and key["cpu"]


def test_without_a_cache_directory_nothing_is_written(tiny_store, tmp_path):
    engine = load_engine("tiny", tiny_store, "cpu")
    assert not engine.denoiser.cached and [p.name for p in tmp_path.glob("**/*.json")] == ["model.json"]


def test_a_text_model_is_confirmed_with_its_probe_conditions(tmp_path, monkeypatch):
    from helpers import save_tiny_text
    from model_store import Store

    store = Store(tmp_path / "models")
    save_tiny_text(store, "words")
    calls = count_probes(monkeypatch)
    cache = tmp_path / "probes"
    first = load_engine("words", store, "cpu", probe_cache=cache)
    second = load_engine("words", store, "cpu", probe_cache=cache)
    assert len(calls) == 1 and second.denoiser.cached and second.probe == first.probe
