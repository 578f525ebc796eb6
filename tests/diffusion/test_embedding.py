import math

import torch

from diffusion.embedding import embedding_frequencies, sinusoidal_embedding


def test_frequencies_are_e_to_the_kf():
    f = math.log(1000.0) / 15
    freqs = embedding_frequencies(32, 1000.0)
    assert freqs.shape == (16,)
    for k in range(16):
        assert abs(freqs[k].item() - math.exp(k * f)) <= 1e-12 * math.exp(k * f)
    assert abs(freqs[-1].item() - 1000.0) < 1e-9


def test_embedding_matches_the_formula_on_known_inputs():
    xs = [0.0, 0.25, 0.0004, 0.9025, 0.5]
    emb = sinusoidal_embedding(torch.tensor(xs, dtype=torch.float64).reshape(-1, 1, 1, 1))
    assert emb.shape == (5, 32, 1, 1)
    f = math.log(1000.0) / 15
    for i, x in enumerate(xs):
        for k in range(16):
            w = 2 * math.pi * math.exp(k * f)
            assert abs(emb[i, k, 0, 0].item() - math.sin(w * x)) <= 1e-9
            assert abs(emb[i, 16 + k, 0, 0].item() - math.cos(w * x)) <= 1e-9
    assert torch.equal(emb[0, :16].flatten(), torch.zeros(16, dtype=torch.float64))
    assert abs(emb[1, 0].item() - 1.0) < 1e-12  # sin(2 pi * 1 * 0.25)


def test_embedding_keeps_float32_dtype():
    emb = sinusoidal_embedding(torch.full((3, 1, 1, 1), 0.3))
    assert emb.dtype == torch.float32 and emb.shape == (3, 32, 1, 1)
