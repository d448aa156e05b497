"""CIFAR ResNet: checkpoint-compatible names, option-A/B shortcuts, 1-D/2-D, norms, attention placement."""
import pytest
import torch
from torch import nn

from replibook.models.norm import BatchNorm
from replibook.models.resnet import ResNetCIFAR, ShortcutA, TinyResNet


def _expected_checkpoint_keys(depth):
    """The key layout of the akamaster checkpoints after stripping ``module.`` (no num_batches_tracked)."""
    bn = ["weight", "bias", "running_mean", "running_var"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for stage in (1, 2, 3):
        for k in range((depth - 2) // 6):
            p = f"layer{stage}.{k}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{s}" for s in bn]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{s}" for s in bn]
    return keys + ["linear.weight", "linear.bias"]


@pytest.mark.parametrize("depth,n_keys,n_params", [(20, 97, 269_722), (56, 277, 853_018)])
def test_parameter_names_and_sizes_match_the_published_checkpoints(depth, n_keys, n_params):
    net = ResNetCIFAR(depth)
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == _expected_checkpoint_keys(depth) and len(keys) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params   # He et al.: 0.27M / 0.85M
    shapes = net.state_dict()
    assert shapes["conv1.weight"].shape == (16, 3, 3, 3)
    assert shapes["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert shapes["layer3.0.conv2.weight"].shape == (64, 64, 3, 3)
    assert shapes["linear.weight"].shape == (10, 64)


def test_forward_features_and_stage_outputs_2d():
    torch.manual_seed(0)
    net = ResNetCIFAR(20).eval()
    x = torch.randn(2, 3, 16, 16)
    stages = net.stage_outputs(x)
    assert [(k, tuple(v.shape)) for k, v in stages.items()] == [
        ("stem", (2, 16, 16, 16)), ("layer1", (2, 16, 16, 16)), ("layer2", (2, 32, 8, 8)), ("layer3", (2, 64, 4, 4))]
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, 64)
    torch.testing.assert_close(feats, stages["layer3"].mean(dim=(2, 3)))
    torch.testing.assert_close(net.features(x), feats)
    torch.testing.assert_close(net.linear(feats), logits)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_one_dimensional_resnet_for_sequences(shortcut):
    torch.manual_seed(0)
    net = ResNetCIFAR(depth=8, num_classes=10, width=16, dim=1, in_channels=1, shortcut=shortcut)
    assert all(not isinstance(m, nn.Conv2d) for m in net.modules())
    x = torch.randn(3, 1, 24)
    stages = net.stage_outputs(x)
    assert tuple(stages["layer3"].shape) == (3, 64, 6)
    out = net(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dim,shape", [(2, (2, 16, 8, 8)), (1, (2, 16, 9))])
def test_option_a_shortcut_subsamples_and_zero_pads_evenly(dim, shape):
    x = torch.randn(shape)
    sc = ShortcutA(16, 32, stride=2, dim=dim)
    y = sc(x)
    sub = x[:, :, ::2, ::2] if dim == 2 else x[:, :, ::2]
    assert y.shape[1] == 32 and y.shape[2:] == sub.shape[2:]
    assert torch.equal(y[:, 8:24], sub)                    # identity channels in the middle
    assert torch.all(y[:, :8] == 0) and torch.all(y[:, 24:] == 0)
    assert sum(p.numel() for p in sc.parameters()) == 0


def test_option_a_has_no_shortcut_parameters_option_b_has_conv_and_norm():
    a, b = ResNetCIFAR(20, shortcut="A"), ResNetCIFAR(20, shortcut="B")
    assert not any("shortcut" in k for k in a.state_dict())
    b_keys = [k for k in b.state_dict() if "shortcut" in k]
    assert "layer2.0.shortcut.0.weight" in b_keys and "layer2.0.shortcut.1.running_var" in b_keys
    assert b.state_dict()["layer3.0.shortcut.0.weight"].shape == (64, 32, 1, 1)
    assert isinstance(b.layer2[0].shortcut[1], BatchNorm)
    assert not any("shortcut" in k for k in b.state_dict() if k.startswith("layer1"))
    with pytest.raises(ValueError):
        ResNetCIFAR(20, shortcut="C")


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer2d", "none", None])
@pytest.mark.parametrize("dim", [1, 2])
def test_norms_by_name(norm, dim):
    torch.manual_seed(0)
    net = ResNetCIFAR(depth=8, dim=dim, in_channels=2, norm=norm, norm_kwargs={"eps": 1e-4} if norm else None)
    x = torch.randn(2, 2, *([8] * dim))
    assert net(x).shape == (2, 10)


def test_channels_last_norm_is_refused_in_a_conv_net():
    with pytest.raises(ValueError, match="layer2d"):
        ResNetCIFAR(depth=8, norm="layer")


def test_group_norm_width_dependent_groups_and_norm_act_alias():
    net = ResNetCIFAR(depth=8, dim=1, in_channels=1, norm="gn")
    assert net.bn1.num_groups == 4 and net.layer3[0].bn1.num_groups == 8
    alias = ResNetCIFAR(depth=8, dim=1, in_channels=1, norm_act="gn")
    assert [type(m) for m in alias.modules()] == [type(m) for m in net.modules()]


def test_attention_applies_to_the_residual_branch_before_the_addition():
    calls = []

    class ZeroBranch(nn.Module):
        def __init__(self, channels):
            super().__init__()
            calls.append(channels)

        def forward(self, x):
            return torch.zeros_like(x)

    torch.manual_seed(0)
    net = ResNetCIFAR(depth=14, attn=ZeroBranch).eval()
    assert calls == [16, 16, 32, 32, 64, 64]
    block = net.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    # branch zeroed -> output = act(shortcut(x)) exactly
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))


def test_invalid_depth():
    for depth in (7, 21, 2):
        with pytest.raises(ValueError, match="6n\\+2"):
            ResNetCIFAR(depth)
    with pytest.raises(ValueError, match="dim"):
        ResNetCIFAR(8, dim=3)


def test_eval_mode_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    net = ResNetCIFAR(8).eval()
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(net(x)[:1], net(x[:1]), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    assert torch.equal(ResNetCIFAR(8).eval()(x), net(x))


def test_tiny_resnet():
    torch.manual_seed(0)
    net = TinyResNet(stages=4, num_classes=40)
    x = torch.randn(2, 3, 16, 16)
    stages = net.stage_outputs(x)
    assert [tuple(v.shape[1:]) for v in stages.values()] == [
        (16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 40) and feats.shape == (2, 128)
    net1d = TinyResNet(stages=3, widths=(8, 16, 32), dim=1, in_channels=1, norm="gn")
    assert net1d(torch.randn(2, 1, 24)).shape == (2, 10)
