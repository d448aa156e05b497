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


# ---------------------------------------------------------------------------- NIN
from replibook.models.convnets import NIN  # noqa: E402


def test_nin_block_structure_kernels_and_pooling():
    net = NIN(3, blocks=4, width=8)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1), (1, 1)] * 4
    assert all(c.bias is None for c in convs) and sum(isinstance(m, BatchNorm) for m in net.modules()) == 12
    pools = [[type(m) for m in b if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))] for b in net.blocks]
    assert pools == [[nn.MaxPool2d], [nn.MaxPool2d], [], []]          # pooling after blocks 1 and 2 only
    assert net.widths == [8, 8, 8, 8] and net.out_dim == 8


def test_nin_block_maps_shapes_features_and_logits():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16, 16)
    feats, maps = NIN(3, blocks=4, width=6)(x)
    assert [tuple(m.shape) for m in maps] == [(5, 6, 8, 8), (5, 6, 4, 4), (5, 6, 4, 4), (5, 6, 4, 4)]
    torch.testing.assert_close(feats, maps[-1].flatten(2).mean(-1))
    net = NIN(3, blocks=3, width=6, num_classes=4, return_blocks=False).eval()
    logits = net(x)
    assert logits.shape == (5, 4)
    with torch.no_grad():
        first_two = net.block_maps(x, upto=2)
        assert len(first_two) == 2
        pooled = net.block_maps(x)[-1].flatten(2).mean(-1)
        torch.testing.assert_close(logits, net.classifier(pooled))


def test_nin_official_variant_and_head_without_pooling():
    net = NIN(3, blocks=4, width=192, kernel=(5, 5, 3, 3), first_widths=(160, 96), pool="official")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs[::3]] == [5, 5, 3, 3]
    assert [(c.in_channels, c.out_channels) for c in convs[:4]] == [(3, 192), (192, 160), (160, 96), (96, 192)]
    assert isinstance(net.blocks[0][-1], nn.MaxPool2d) and isinstance(net.blocks[1][-1], nn.AvgPool2d)
    _, maps = net(torch.randn(2, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [16, 8, 8, 8] and maps[0].shape[1] == 96
    head = NIN(6, blocks=1, width=4, pool_blocks=(), num_classes=10, return_blocks=False)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in head.modules())
    assert head(torch.randn(2, 6, 4, 4)).shape == (2, 10)


def test_nin_gradients_and_bad_arguments():
    net = NIN(1, blocks=2, width=4, norm="none", num_classes=3, return_blocks=False)
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    net(torch.randn(3, 1, 8, 8)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError):
        NIN(1, blocks=0)
    with pytest.raises(ValueError):
        NIN(1, blocks=2, kernel=(3, 3, 3))
    with pytest.raises(ValueError):
        NIN(1, blocks=2, kernel=2)
    with pytest.raises(ValueError):
        NIN(1, pool="mean")
