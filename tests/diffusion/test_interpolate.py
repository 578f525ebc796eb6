import math

import torch

from diffusion.interpolate import interpolated_noises, slerp


def test_slerp_is_exact_at_the_ends_and_on_the_sphere_between():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    walk = interpolated_noises(a, b, 8)
    assert walk.shape == (8, 3, 8, 8)
    assert torch.equal(walk[0], a) and torch.equal(walk[-1], b)
    # equal norms stay (nearly) on the sphere; the angle moves linearly
    a1, b1 = a / a.norm(), b / b.norm()
    theta = math.acos(float(torch.dot(a1.flatten(), b1.flatten())))
    mid = slerp(a1, b1, 0.5)
    assert abs(float(mid.norm()) - 1.0) < 1e-5
    assert abs(math.acos(float(torch.dot(a1.flatten(), mid.flatten()))) - theta / 2) < 1e-5


def test_slerp_matches_its_formula():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    got = slerp(a, b, 1 / 3)
    theta = math.pi / 2
    want = torch.tensor([math.sin(2 / 3 * theta), 2 * math.sin(1 / 3 * theta)]) / math.sin(theta)
    assert torch.allclose(got, want, atol=1e-6)
