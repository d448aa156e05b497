"""ConvNet: block structure, shapes in 1-D and 2-D, norms, returned block maps, gradients."""
import pytest
import torch
from torch import nn

from replibook.models.convnets import ConvNet, DigitsCNN
from replibook.models.norm import BatchNorm, GroupNorm


def test_widths_double_and_out_dim():
    net = ConvNet(1, blocks=3, width=8)
    assert net.widths == [8, 16, 32] and net.out_dim == 32
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 32)]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)   # norm follows: no bias
    assert sum(isinstance(m, BatchNorm) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3


def test_block_order_conv_norm_relu_pool():
    net = ConvNet(3, blocks=2, width=4, norm="gn")
    kinds = [type(m) for m in net.blocks[0]]
    assert kinds == [nn.Conv2d, GroupNorm, nn.ReLU, nn.MaxPool2d]


@pytest.mark.parametrize("dim,shape", [(2, (5, 1, 16, 16)), (1, (5, 3, 40))])
def test_shapes_and_block_maps(dim, shape):
    torch.manual_seed(0)
    net = ConvNet(shape[1], blocks=2, width=6, dim=dim, return_blocks=True)
    feats, maps = net(torch.randn(*shape))
    assert feats.shape == (5, 12)
    side = shape[-1]
    assert [tuple(m.shape) for m in maps] == [
        (5, 6) + (side // 2,) * dim, (5, 12) + (side // 4,) * dim]
    # the features are the global average of the last block's map
    torch.testing.assert_close(feats, maps[-1].flatten(2).mean(-1))


def test_stem_stride_and_tiny_inputs():
    net = ConvNet(1, blocks=4, width=4, stem_stride=2)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 32)
    # ceil-mode pooling keeps 1-pixel maps alive (8 px, 4 blocks: 4, 2, 1, 1)
    assert ConvNet(1, blocks=4, width=4)(torch.randn(2, 1, 8, 8)).shape == (2, 32)


def test_no_norm_has_bias_and_gradients_flow():
    torch.manual_seed(0)
    net = ConvNet(1, blocks=2, width=4, norm="none")
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    out = net(torch.randn(3, 1, 8, 8))
    out.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_arguments():
    with pytest.raises(ValueError):
        ConvNet(1, blocks=0)
    with pytest.raises(ValueError):
        ConvNet(1, dim=3)
    with pytest.raises(ValueError):
        ConvNet(1, stem_stride=0)


def test_deterministic_and_digitscnn_untouched():
    torch.manual_seed(1)
    a = ConvNet(1, blocks=2, width=4).eval()
    torch.manual_seed(1)
    b = ConvNet(1, blocks=2, width=4).eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(a(x), b(x))
    logits, feats = DigitsCNN(image_size=16)(x, return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, 32)
