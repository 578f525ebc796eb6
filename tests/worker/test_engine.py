"""Engine loading: which precisions a device is offered."""

from __future__ import annotations

import pytest
import torch

from model_store import ModelStoreError
from worker import engine as engine_module
from worker.engine import bf16_supported, check_precision, load_engine


def test_bf16_without_native_kernels_is_refused_with_the_reason(tiny_store, monkeypatch):
    monkeypatch.setattr(engine_module, "bf16_supported", lambda device: False)
    with pytest.raises(ModelStoreError, match=r"this CPU .* has no native bf16 kernels; use fp32"):
        load_engine("tiny", tiny_store, device="cpu", precision="bf16")
    assert load_engine("tiny", tiny_store, device="cpu", precision="fp32").id.startswith("cpu/fp32/")


def test_bf16_is_offered_where_onednn_has_native_bf16_kernels():
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16_supported("cpu") is native
    if native:
        check_precision("cpu", "bf16")
    else:
        with pytest.raises(ModelStoreError, match="no native bf16 kernels"):
            check_precision("cpu", "bf16")


def test_unknown_precisions_are_refused():
    with pytest.raises(ModelStoreError, match="unknown precision 'fp16'"):
        check_precision("cpu", "fp16")


def test_another_png_encoder_is_another_engine_and_cannot_join_the_live_ones(tiny_store, monkeypatch, redis_server):
    """Pillow builds with another zlib give other PNG bytes for the same pixels: the encoder is part of the engine id,
    so the engine key changes with it and a worker with another encoder is refused beside the live ones."""
    import redis as redis_lib

    from app.core import runs
    from helpers import generate_spec
    from worker.heartbeat import EngineConflict, claim_engines

    engine = load_engine("tiny", tiny_store, device="cpu", precision="fp32")
    device, precision, kernels, encoder = engine.id.split("/")
    assert len(encoder) == 16 and engine.record()["encoder"] == encoder
    monkeypatch.setattr(engine_module, "encoder_fingerprint", lambda: "f" * 16)
    assert engine.id == f"{device}/{precision}/{kernels}/{'f' * 16}" and engine.record()["encoder"] == "f" * 16
    spec = generate_spec(engine.manifest, 1, 8, 0.0)
    assert runs.engine_key(spec, engine.id) != runs.engine_key(spec, f"{device}/{precision}/{kernels}/{encoder}")
    conn = redis_lib.Redis.from_url(redis_server.url)
    claim_engines(conn, {"tiny@1": f"{device}/{precision}/{kernels}/{encoder}"}, ttl=10)
    with pytest.raises(EngineConflict):
        claim_engines(conn, {"tiny@1": engine.id}, ttl=10)
