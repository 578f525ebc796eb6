"""Classifier-free guidance as rows of one call (diffusion.guidance): the mix, which rows run, row independence."""

import torch

from diffusion.guidance import Condition, Guidance, guided_eps
from diffusion.kernels import probe

D = 4


def conditioned(x, t, c):
    """A row-wise stand-in network whose output depends on the row's condition."""
    return x * (1 + c.sum(dim=1).reshape(-1, 1, 1, 1)) + t


def test_guided_eps_is_ho_and_salimans_eq_6_with_s_equal_1_plus_w():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    w = 2.0  # eq. 6: (1 + w) eps(c) - w eps(empty)
    assert torch.allclose(guided_eps(u, c, torch.tensor(1 + w)), (1 + w) * c - w * u)
    assert torch.equal(guided_eps(u, c, torch.tensor(0.0)), u)
    assert torch.equal(guided_eps(u, c, torch.tensor(1.0)), c)


def test_rows_per_condition():
    e = torch.ones(D)
    assert Condition(None, 7.0).rows == (True, False)  # no prompt: the unconditional row alone
    assert Condition(e, 0.0).rows == (True, False)  # s = 0 is the prompt-free image
    assert Condition(e, 1.0).rows == (False, True)  # s = 1: the conditional row alone
    assert Condition(e, 3.0).rows == (True, True)
    g = Guidance(torch.zeros(D), [Condition(None), Condition(e, 1.0), Condition(e, 3.0)])
    assert g.rows_per_sample([0, 1, 2]) == 4


def test_one_network_call_per_step_and_each_sample_alone_in_any_company():
    gen = torch.Generator().manual_seed(0)
    empty = torch.randn(D, generator=gen)
    prompts = [torch.randn(D, generator=gen) for _ in range(3)]
    conditions = [Condition(prompts[0], 3.0), Condition(None), Condition(prompts[1], 1.0), Condition(prompts[2], 0.0)]
    x = torch.randn(4, 2, 3, 3, generator=gen)
    t = torch.rand(4, 1, 1, 1, generator=gen)
    calls = []

    def model(xs, ts, cs):
        calls.append(xs.shape[0])
        return conditioned(xs, ts, cs)

    together = Guidance(empty, conditions)(model, x, t, [0, 1, 2, 3])
    assert calls == [5]  # 2 + 1 + 1 + 1 rows, one call
    for i in range(4):
        alone = Guidance(empty, [conditions[i]])(model, x[i : i + 1], t[i : i + 1], [0])
        assert torch.equal(alone[0], together[i]), i
    eu, ec = conditioned(x[:1], t[:1], empty[None]), conditioned(x[:1], t[:1], prompts[0][None])
    assert torch.equal(together[0], guided_eps(eu, ec, torch.tensor(3.0))[0])
    assert torch.equal(together[3], conditioned(x[3:4], t[3:4], empty[None])[0])  # s = 0: the prompt-free eps
    assert not torch.equal(together[2], conditioned(x[2:3], t[2:3], empty[None])[0])  # the prompt matters


def test_the_probe_feeds_conditions_and_rejects_a_network_that_mixes_them_across_rows():
    conditions = torch.randn(6, D, generator=torch.Generator().manual_seed(1))
    found = probe(conditioned, (2, 3, 3), reference=6, conditions=conditions)
    assert found.shapes.sizes == (1, 2, 3, 4, 5, 6)

    def mixes(x, t, c):  # a row's output depends on the other rows' conditions
        return x * (1 + c.mean()) + t

    mixed = probe(mixes, (2, 3, 3), reference=6, conditions=conditions)
    assert mixed.shapes.sizes == (1,) and mixed.rejected == (2, 3, 4, 5, 6)
    plain = probe(lambda x, t: x + t, (2, 3, 3), reference=6)
    assert plain.fingerprint != found.fingerprint  # the conditions entered the probe
