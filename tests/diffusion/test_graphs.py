"""CUDA graphs of the network calls (diffusion.graphs): only where a CUDA GPU is present."""

import pytest
import torch

from diffusion.ddim import sample
from diffusion.denoiser import Denoiser
from diffusion.graphs import CUDAGraphs
from helpers import make_tiny_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_replay_gives_the_eager_bits_for_every_input():
    net = make_tiny_net().cuda().eval()
    graphs = CUDAGraphs(lambda x, r: net(x, r**2))
    with torch.inference_mode():
        for rows in (3, 8, 3):
            x, r = torch.randn(rows, 3, 16, 16, device="cuda"), torch.rand(rows, 1, 1, 1, device="cuda")
            assert torch.equal(graphs(x, r), net(x, r**2))
    assert len(graphs.captured) == 2 and graphs.graphed_shapes == 2


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_a_graphed_denoiser_keeps_a_seed_identical_in_any_batch(autocast):
    denoiser = Denoiser(
        make_tiny_net().cuda(), [0.5] * 3, [0.25] * 3, channels_last=True, autocast_dtype=autocast, cuda_graphs=True
    )
    shape = (3, 16, 16)
    denoiser.calibrate(shape, reference=32)
    alone = [sample(denoiser, [s], 6, shape, eta=0.5, device="cuda")[0] for s in range(5)]
    together = sample(denoiser, [4, 3, 2, 1, 0], 6, shape, eta=0.5, device="cuda")
    assert all(torch.equal(together[4 - s], alone[s]) for s in range(5))
    assert denoiser.graphs is not None and denoiser.graphs.graphed_shapes >= 1
