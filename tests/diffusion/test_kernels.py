"""The kernel probe: which call sizes keep a row's bits, and what it refuses."""

import pytest
import torch

from diffusion.denoiser import Denoiser
from diffusion.kernels import CallShapes, KernelsError, probe
from helpers import make_tiny_net, require_prerequisite

SHAPE = (3, 8, 8)


def rowwise(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * rate


def test_plan_uses_full_reference_calls_then_pads_up():
    shapes = CallShapes((2, 3, 8))
    assert shapes.plan(1) == [2]
    assert shapes.plan(3) == [3]
    assert shapes.plan(4) == [8]
    assert shapes.plan(8) == [8]
    assert shapes.plan(19) == [8, 8, 3]
    assert CallShapes((16,)).plan(1) == [16]
    with pytest.raises(ValueError):
        CallShapes((4, 2))


def test_a_row_wise_network_keeps_every_size():
    found = probe(rowwise, SHAPE, reference=6)
    assert found.shapes.sizes == (1, 2, 3, 4, 5, 6) and found.rejected == ()
    assert len(found.fingerprint) == 64


def test_sizes_whose_arithmetic_differs_are_rejected():
    def batch_dependent(x, rate):  # a last-bit difference at sizes 1 and 3, as kernels chosen by shape give
        out = rowwise(x, rate)
        return out * (1 + 2**-20) if x.shape[0] in (1, 3) else out

    found = probe(batch_dependent, SHAPE, reference=6)
    assert found.shapes.sizes == (2, 4, 5, 6) and found.rejected == (1, 3)
    assert found.fingerprint == probe(rowwise, SHAPE, reference=6).fingerprint


def test_a_network_that_mixes_rows_falls_back_to_one_row_calls():
    def mixing(x, rate):  # a batch statistic: every row depends on the others
        return x - x.mean(dim=0, keepdim=True) * rate

    found = probe(mixing, SHAPE, reference=4)
    assert found.shapes.sizes == (1,) and found.rejected == (2, 3, 4)


def test_a_network_that_never_repeats_itself_is_refused():
    with pytest.raises(KernelsError, match="not reproducible"):
        probe(lambda x, r: x + torch.rand_like(x) * 1e-3, SHAPE, reference=4)


def test_a_reference_whose_rows_depend_on_their_position_is_shrunk():
    def split_boundary(x, rate):  # like oneDNN with 16 rows on 3 threads: row 5 is computed another way
        out = rowwise(x, rate)
        if x.shape[0] > 5:
            out[5] = out[5] * (1 + 2**-20)
        return out

    found = probe(split_boundary, SHAPE, reference=8)
    assert found.shapes.sizes == (1, 2, 3, 4, 5) and found.rejected == (6, 7, 8)
    assert found.fingerprint == probe(rowwise, SHAPE, reference=8).fingerprint  # row 0 is row 0


def test_the_fingerprint_names_the_arithmetic():
    a = probe(rowwise, SHAPE, reference=4).fingerprint
    assert probe(rowwise, SHAPE, reference=4).fingerprint == a
    assert probe(lambda x, r: rowwise(x, r) * (1 + 2**-20), SHAPE, reference=4).fingerprint != a


def test_onednn_calls_are_padded_to_a_probed_size():
    calls = []
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3, channels_last=True)
    found = denoiser.calibrate((3, 16, 16), reference=8)
    network = denoiser.network
    denoiser.network = lambda x, r: calls.append(x.shape[0]) or network(x, r)
    x, rates = torch.randn(11, 3, 16, 16), torch.full((11, 1, 1, 1), 0.5)
    out = denoiser(x, rates)
    assert out.shape == x.shape and out.is_contiguous()
    assert calls == found.shapes.plan(11) and calls[0] == found.shapes.largest
    assert all(size in found.shapes.sizes for size in calls)


def test_candidates_limit_the_sizes_probed():
    found = probe(rowwise, SHAPE, reference=16, candidates=(1, 2, 4, 8))
    assert found.shapes.sizes == (1, 2, 4, 8, 16) and found.rejected == ()


@pytest.mark.slow
def test_a_compiled_network_keeps_a_seed_identical_in_any_batch():
    """torch.compile (inductor) is another arithmetic: probed like any other, then exact across batches."""
    require_prerequisite("g++")
    require_prerequisite("python3-dev")
    from torch._dynamo.utils import counters

    from diffusion.ddim import sample

    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3, channels_last=True, compile=True)
    shape = (3, 16, 16)
    before = counters["frames"]["ok"]
    found = denoiser.calibrate(shape, reference=4, candidates=(1, 2, 4))
    assert set(found.shapes.sizes) | set(found.rejected) == {1, 2, 4}
    assert counters["frames"]["ok"] > before, "the probe ran no compiled code"
    compiled = dict(counters["frames"])
    alone = [sample(denoiser, [s], 4, shape, eta=0.5)[0] for s in range(5)]
    together = sample(denoiser, [4, 3, 2, 1, 0], 4, shape, eta=0.5)  # a full call and a padded one
    assert all(torch.equal(together[4 - s], alone[s]) for s in range(5))
    assert dict(counters["frames"]) == compiled, "sampling compiled anew: it ran code the probe never saw"
    with pytest.raises(RuntimeError, match=r"[Rr]ecompil"):  # a call shape the probe never compiled: refused
        denoiser.network(torch.zeros(3, *shape), torch.full((3, 1, 1, 1), 0.5))
