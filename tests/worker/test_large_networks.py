"""A large network on the CPU calls one row at a time: a fixed call size is row-independent by construction,
and a lone job pays for no padding (diffusion.kernels.reference_rows)."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion import kernels
from worker import engine as engine_module
from worker.engine import load_engine


def test_the_reference_call_is_one_row_only_for_large_networks_on_the_cpu():
    assert kernels.reference_rows(12_100_000_000, "cpu", 16) == 1  # ddpm-cifar10-32
    assert kernels.reference_rows(571_000_000, "cpu", 16) == 16  # the default 32-px U-Net
    assert kernels.reference_rows(12_100_000_000, "cuda", 128) == 128


def test_row_flops_counts_one_row(tiny_store):
    engine = load_engine("tiny", tiny_store, "cpu")
    net = engine.denoiser.net
    one = kernels.row_flops(lambda x, t: net(x, t**2), engine.shape)
    assert 0 < one < kernels.LARGE_ROW_FLOPS
    assert engine.probe.shapes.sizes[-1] > 1  # a small network keeps its batched calls


def test_a_large_network_runs_one_row_calls_and_keeps_each_seeds_bytes(tiny_store, monkeypatch):
    monkeypatch.setattr(kernels, "LARGE_ROW_FLOPS", 1)  # the tiny U-Net counts as large
    engine = load_engine("tiny", tiny_store, "cpu")
    assert engine.probe.shapes.sizes == (1,)
    assert engine.denoiser.shapes.plan(3) == [1, 1, 1]
    together = engine.generate([1, 2, 3], 4, [0.0, 1.0, 0.0])
    for i, (seed, eta) in enumerate([(1, 0.0), (2, 1.0), (3, 0.0)]):
        assert np.array_equal(engine.generate([seed], 4, [eta])[0], together[i])
    assert engine_module.REFERENCE_ROWS["cpu"] == 16


@pytest.mark.parametrize("flops", [kernels.LARGE_ROW_FLOPS - 1, kernels.LARGE_ROW_FLOPS + 1])
def test_the_threshold_is_strict(flops):
    assert kernels.reference_rows(int(flops), "cpu", 16) == (1 if flops > kernels.LARGE_ROW_FLOPS else 16)
