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
