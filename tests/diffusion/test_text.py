"""The prompt-conditioned U-Net: a text encoder and FiLM on every residual block; rows stay independent."""

import torch

from diffusion.unet import UNet, UNetConfig
from model_store.vocabulary import Vocabulary

VOCAB = Vocabulary.build(["red heart", "cat face", "grinning face with smiling eyes", "blue circle"], tokens=6)


def text_net(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(16, widths=(8, 16), block_depth=1, text_vocab=VOCAB.size, text_tokens=VOCAB.tokens, text_dims=8)
    net = UNet(cfg)
    with torch.no_grad():  # leave the zero initialisation, so that the prompt matters
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.3)
            elif not p.any():
                p.normal_(0, 0.1)
    return net.eval()


def ids(*prompts: str) -> torch.Tensor:
    return torch.tensor([VOCAB.encode(p).tokens for p in prompts])


def test_an_unconditioned_config_and_its_weights_read_as_before():
    cfg = UNetConfig(16, widths=(8, 16), block_depth=1)
    assert "text_vocab" not in cfg.to_dict() and UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert not any(k.startswith("text") or ".film." in k for k in UNet(cfg).state_dict())


def test_a_conditioned_config_round_trips():
    cfg = text_net().config
    assert cfg.to_dict()["text_tokens"] == VOCAB.tokens and UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_at_initialisation_the_prompt_changes_nothing():
    torch.manual_seed(0)
    cfg = UNetConfig(16, widths=(8, 16), block_depth=1, text_vocab=VOCAB.size, text_tokens=VOCAB.tokens, text_dims=8)
    net = UNet(cfg).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
    x, v = torch.randn(2, 3, 16, 16), torch.full((2, 1, 1, 1), 0.5)
    with torch.no_grad():
        assert torch.equal(net(x, v, ids("red heart", "cat face")), net(x, v, ids("", "")))


def test_the_prompt_conditions_the_output():
    net = text_net()
    x, v = torch.randn(1, 3, 16, 16), torch.full((1, 1, 1, 1), 0.5)
    with torch.no_grad():
        red, cat, empty = (net(x, v, ids(p)) for p in ("red heart", "cat face", ""))
        assert (red - cat).abs().mean() > 1e-3
        assert torch.equal(net(x, v, None), empty)  # no prompt is the empty prompt


def test_a_rows_bits_do_not_depend_on_the_prompts_beside_it():
    net = text_net()
    torch.manual_seed(1)
    x, v = torch.randn(4, 3, 16, 16), torch.rand(4, 1, 1, 1)
    with torch.no_grad():
        beside_long = net(x, v, ids("red heart", "grinning face with smiling eyes", "cat", ""))
        beside_empty = net(x, v, ids("red heart", "", "", ""))
        beside_short = net(x, v, ids("red heart", "face", "blue", "red"))
    assert torch.equal(beside_long[0], beside_empty[0]) and torch.equal(beside_long[0], beside_short[0])
