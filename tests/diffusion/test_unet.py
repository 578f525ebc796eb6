import pytest
import torch

from diffusion.unet import UNet, UNetConfig


def keras_trainable_parameters(widths=(32, 64, 96, 128), block_depth=2, embedding_dims=32, channels=3) -> int:
    """Count the Keras example's trainable weights layer by layer (get_network in keras-io ddim.py).

    Conv2D(k x k, cin -> cout) has k*k*cin*cout + cout weights. BatchNormalization(center=False,
    scale=False) has none trainable.
    """
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731

    def residual(cin, cout):
        return (conv(1, cin, cout) if cin != cout else 0) + conv(3, cin, cout) + conv(3, cout, cout)

    total = conv(1, channels, widths[0])
    width, skips = widths[0] + embedding_dims, []
    for w in widths[:-1]:
        for _ in range(block_depth):
            total += residual(width, w)
            width = w
            skips.append(w)
    for _ in range(block_depth):
        total += residual(width, widths[-1])
        width = widths[-1]
    for w in reversed(widths[:-1]):
        for _ in range(block_depth):
            total += residual(width + skips.pop(), w)
            width = w
    return total + conv(1, width, channels)


def test_default_config_has_the_keras_examples_parameter_count():
    net = UNet(UNetConfig(32))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert keras_trainable_parameters() == 1_950_627
    assert trainable == 1_950_627


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_zero_initialised_output(size):
    torch.manual_seed(0)
    net = UNet(UNetConfig(size)).eval()
    x = torch.randn(2, 3, size, size)
    variance = torch.tensor([0.1, 0.9]).reshape(2, 1, 1, 1)
    with torch.no_grad():
        out = net(x, variance)
    assert out.shape == (2, 3, size, size)
    assert torch.equal(out, torch.zeros_like(out)), "a fresh net must predict exactly zero noise"
    assert torch.count_nonzero(net.head.weight) == 0 and torch.count_nonzero(net.head.bias) == 0


def test_output_depends_on_the_noise_variance_and_the_input():
    torch.manual_seed(0)
    net = UNet(UNetConfig(16, widths=(8, 16), block_depth=1)).eval()
    torch.nn.init.normal_(net.head.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = net(x, torch.full((2, 1, 1, 1), 0.1))
        b = net(x, torch.full((2, 1, 1, 1), 0.8))
    assert (a - b).abs().max() > 1e-3
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_batchnorm_matches_keras_settings():
    net = UNet(UNetConfig(32))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 and not m.affine for m in norms)


def test_image_size_must_fit_the_pooling():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(30)
