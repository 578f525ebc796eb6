import copy

import pytest
import torch

from diffusion.ema import EMAWarmup, ema_update
from diffusion.unet import UNet, UNetConfig


def test_warmup_decay_follows_k_diffusion_and_caps():
    w = EMAWarmup(inv_gamma=1.0, power=2 / 3, max_value=0.999)
    assert w.decay(0) == 0.0  # the first update copies the model
    assert w.decay(10) == pytest.approx(1 - 11 ** (-2 / 3))
    assert w.decay(1000) == pytest.approx(1 - 1001 ** (-2 / 3))
    assert w.decay(10**7) == 0.999
    decays = [w.decay(s) for s in range(0, 50000, 100)]
    assert decays == sorted(decays)


def test_ema_averages_parameters_and_buffers():
    torch.manual_seed(0)
    model = UNet(UNetConfig(16, widths=(8, 16), block_depth=1))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for _name, b in model.named_buffers():
            if b.is_floating_point():
                b.add_(2.0)
            else:
                b.fill_(7)
    before_p = {k: v.clone() for k, v in ema.named_parameters()}
    before_b = {k: v.clone() for k, v in ema.named_buffers()}
    ema_update(ema, model, decay=0.75)
    for k, v in ema.named_parameters():
        assert torch.allclose(v, 0.75 * before_p[k] + 0.25 * dict(model.named_parameters())[k])
    floats = [k for k, v in ema.named_buffers() if v.is_floating_point()]
    assert any("running_var" in k for k in floats)
    for k, v in ema.named_buffers():
        if v.is_floating_point():
            assert torch.allclose(v, before_b[k] + 0.5), k  # 0.75 * b + 0.25 * (b + 2)
        else:
            assert v.item() == 7, k
