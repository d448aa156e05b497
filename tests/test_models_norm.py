"""Normalization layers: equivalence with torch, the LN invariances (Ba et al. 2016, Table 1), the registry."""
import functools

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from replibook.errors import UnknownName
from replibook.models import norm as N


def _randomise_affine(*modules):
    """Give matching modules the same random gain/bias so the affine part is tested too."""
    gen = torch.Generator().manual_seed(1)
    for name in ("weight", "bias"):
        ref = getattr(modules[0], name, None)
        if ref is None:
            continue
        value = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
        for m in modules:
            with torch.no_grad():
                getattr(m, name).copy_(value)


def _grads(module, x, out_grad):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(out_grad)
    params = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, params


# --------------------------------------------------------------------------- LayerNorm

@pytest.mark.parametrize("shape,normalized_shape", [
    ((4, 16), 16), ((2, 5, 8), 8), ((3, 4, 5, 6), (5, 6)), ((2, 3, 4, 5), (3, 4, 5)), ((7, 1), 1),
])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_layer_norm_matches_torch_values_and_gradients(shape, normalized_shape, affine, fused):
    torch.manual_seed(0)
    ours = N.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=affine, fused=fused).double()
    ref = nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=affine).double()
    if affine:
        _randomise_affine(ours, ref)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    g = torch.randn(shape, dtype=torch.float64)
    y1, gx1, gp1 = _grads(ours, x, g)
    y2, gx2, gp2 = _grads(ref, x, g)
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-6, rtol=0)
    assert gp1.keys() == gp2.keys()
    for k in gp1:
        torch.testing.assert_close(gp1[k], gp2[k], atol=1e-6, rtol=0)


def test_layer_norm_float32_and_state_dict_names_match_torch():
    torch.manual_seed(0)
    ours, ref = N.LayerNorm(32), nn.LayerNorm(32)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(8, 32) * 10
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # gain initialised to 1, bias to 0 (the paper's g and b)
    assert torch.equal(ours.weight, torch.ones(32)) and torch.equal(ours.bias, torch.zeros(32))


def test_layer_norm_per_example_statistics_and_train_equals_eval():
    torch.manual_seed(0)
    ln = N.LayerNorm(64)
    x = torch.randn(10, 64) * 5 + 3
    y = ln(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=1, unbiased=False), torch.ones(10), atol=1e-4, rtol=0)
    ln.eval()
    torch.testing.assert_close(ln(x), y, atol=0, rtol=0)          # no running statistics
    # one example alone gives the same output as inside a batch (no batch dependence)
    torch.testing.assert_close(ln(x[3:4]), y[3:4], atol=1e-6, rtol=0)


def test_layer_norm_rejects_wrong_trailing_shape():
    with pytest.raises(ValueError, match="trailing shape"):
        N.LayerNorm(8)(torch.randn(2, 7))


class TestLayerNormInvariances:
    """Ba et al. 2016, Table 1 / Sec. 5.1, on h = LN(W x) with a random W and no bias."""

    def setup_method(self):
        torch.manual_seed(0)
        self.W = torch.randn(32, 20, dtype=torch.float64)
        self.x = torch.randn(6, 20, dtype=torch.float64)
        self.ln = N.LayerNorm(32, eps=1e-12).double()     # eps -> 0: exact invariances

    def h(self, W, x):
        return self.ln(x @ W.t())

    def test_weight_matrix_rescaling(self):
        torch.testing.assert_close(self.h(3.7 * self.W, self.x), self.h(self.W, self.x))

    def test_weight_matrix_recentring(self):
        delta = torch.randn(1, 20, dtype=torch.float64)      # the same vector added to every row
        torch.testing.assert_close(self.h(self.W + delta, self.x), self.h(self.W, self.x))

    def test_single_example_rescaling(self):
        scale = torch.tensor([[1.0], [2.0], [0.3], [5.0], [1.0], [9.0]], dtype=torch.float64)
        torch.testing.assert_close(self.h(self.W, self.x * scale), self.h(self.W, self.x))

    def test_not_invariant_to_shifting_an_input(self):
        shifted = self.h(self.W, self.x + 1.5)
        assert (shifted - self.h(self.W, self.x)).abs().max() > 1e-2

    def test_not_invariant_to_rescaling_one_weight_vector(self):
        W = self.W.clone()
        W[0] *= 4.0
        assert (self.h(W, self.x) - self.h(self.W, self.x)).abs().max() > 1e-2


# --------------------------------------------------------------------------- BatchNorm

@pytest.mark.parametrize("shape,ref_cls", [((16, 6), nn.BatchNorm1d), ((8, 6, 10), nn.BatchNorm1d),
                                           ((4, 6, 5, 7), nn.BatchNorm2d), ((3, 6, 2, 3, 4), nn.BatchNorm3d)])
def test_batch_norm_matches_torch_train_and_eval(shape, ref_cls):
    torch.manual_seed(0)
    ours, ref = N.BatchNorm(6).double(), ref_cls(6).double()
    _randomise_affine(ours, ref)
    assert ours.momentum == 0.1
    for step in range(3):        # training: batch statistics, running averages updated
        x = torch.randn(shape, dtype=torch.float64) * (step + 1) + step
        g = torch.randn(shape, dtype=torch.float64)
        y1, gx1, gp1 = _grads(ours, x, g)
        y2, gx2, gp2 = _grads(ref, x, g)
        torch.testing.assert_close(y1, y2, atol=1e-6, rtol=0)
        torch.testing.assert_close(gx1, gx2, atol=1e-6, rtol=0)
        for k in gp1:
            torch.testing.assert_close(gp1[k], gp2[k], atol=1e-6, rtol=0)
        ours.zero_grad(), ref.zero_grad()
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=0)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)
    # eval mode: each example is normalised by running statistics, independently of the batch
    torch.testing.assert_close(ours(x[:1]), ours(x)[:1], atol=1e-12, rtol=0)


def test_batch_norm_state_dict_matches_torch_for_checkpoint_loading():
    assert list(N.BatchNorm(4).state_dict()) == list(nn.BatchNorm2d(4).state_dict())
    with pytest.raises(ValueError):
        N.BatchNorm(4)(torch.randn(4))


def test_batch_seq_without_mask_equals_batchnorm1d_on_tokens():
    torch.manual_seed(0)
    ours, ref = N.BatchNormSeq(5).double(), nn.BatchNorm1d(5).double()
    _randomise_affine(ours, ref)
    x = torch.randn(4, 7, 5, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x.reshape(-1, 5)).reshape(4, 7, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=0)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x.reshape(-1, 5)).reshape(4, 7, 5), atol=1e-6, rtol=0)


def test_batch_seq_with_padding_mask_uses_only_valid_tokens():
    torch.manual_seed(0)
    bn = N.BatchNormSeq(3).double()
    _randomise_affine(bn)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 2:] = True
    # direct computation over the valid tokens
    valid_tokens = x[~padding]                                   # (M, C)
    mean = valid_tokens.mean(0)
    var = valid_tokens.var(0, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    y = bn(x, padding_mask=padding)
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=0)
    m = valid_tokens.shape[0]
    torch.testing.assert_close(bn.running_mean, 0.1 * mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var * m / (m - 1), atol=1e-10, rtol=0)
    # padded values cannot move the valid outputs, and receive no gradient through the statistics
    x2 = x.clone()
    x2[padding] = 1e3
    x2.requires_grad_(True)
    y2 = bn(x2, padding_mask=padding)
    torch.testing.assert_close(y2[~padding], y[~padding], atol=1e-10, rtol=0)
    weights = torch.randn(y2[~padding].shape, generator=torch.Generator().manual_seed(2), dtype=y2.dtype)
    (y2[~padding] * weights).sum().backward()
    assert torch.all(x2.grad[padding] == 0)
    assert x2.grad[~padding].abs().min() > 0


def test_batch_seq_rejects_bad_shapes():
    bn = N.BatchNormSeq(4)
    with pytest.raises(ValueError):
        bn(torch.randn(2, 4))
    with pytest.raises(ValueError):
        bn(torch.randn(2, 3, 4), padding_mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding"):
        bn(torch.randn(2, 3, 4), padding_mask=torch.ones(2, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- group / instance / layer2d

@pytest.mark.parametrize("channels,groups", [(1, 1), (4, 1), (8, 2), (12, 3), (16, 4), (32, 8), (64, 8), (96, 8),
                                             (20, 5), (6, 1)])
def test_default_num_groups(channels, groups):
    assert N.default_num_groups(channels) == groups
    assert channels % groups == 0


@pytest.mark.parametrize("shape", [(4, 16), (4, 16, 9), (2, 16, 5, 6)])
def test_group_norm_matches_torch(shape):
    torch.manual_seed(0)
    ours = N.make_norm("gn", 16)
    assert ours.num_groups == 4
    ref = nn.GroupNorm(4, 16)
    _randomise_affine(ours, ref)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
    assert N.make_norm("group", 16, num_groups=2).num_groups == 2
    with pytest.raises(ValueError, match="divisible"):
        N.make_norm("group", 16, num_groups=3)


@pytest.mark.parametrize("shape,ref_cls", [((3, 5, 11), nn.InstanceNorm1d), ((3, 5, 6, 7), nn.InstanceNorm2d)])
def test_instance_norm_matches_torch(shape, ref_cls):
    torch.manual_seed(0)
    ours, ref = N.make_norm("in", 5), ref_cls(5, affine=True)
    _randomise_affine(ours, ref)
    x = torch.randn(shape) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 6, 5, 5), (3, 6, 10)])
def test_layer2d_normalises_each_example_over_all_channels_and_positions(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 2
    ours = N.make_norm("layer2d", 6)
    torch.testing.assert_close(ours(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=0)


def test_domain_batch_norm_keeps_statistics_per_domain():
    torch.manual_seed(0)
    dbn = N.make_norm("domain_batch", 3, num_domains=2)
    dbn(torch.randn(8, 3) + 5)
    dbn.set_domain(1)
    dbn(torch.randn(8, 3) - 5)
    assert dbn.norms[0].running_mean.mean() > 0.3 and dbn.norms[1].running_mean.mean() < -0.3
    with pytest.raises(ValueError):
        dbn.set_domain(2)


# --------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name,cls", [
    ("batch", N.BatchNorm), ("BN", N.BatchNorm), ("layer", N.LayerNorm), ("ln", N.LayerNorm),
    ("group", N.GroupNorm), ("gn", N.GroupNorm), ("instance", N.InstanceNorm), ("in", N.InstanceNorm),
    ("layer2d", N.LayerNorm2d), ("batch_seq", N.BatchNormSeq), ("batch-seq", N.BatchNormSeq),
    ("none", nn.Identity), ("identity", nn.Identity),
])
def test_make_norm_by_name_and_alias(name, cls):
    assert isinstance(N.make_norm(name, 16), cls)


def test_make_norm_accepts_none_class_partial_and_kwargs():
    assert isinstance(N.make_norm(None, 8), nn.Identity)
    assert isinstance(N.make_norm(nn.BatchNorm1d, 8), nn.BatchNorm1d)
    ln = N.make_norm(functools.partial(N.LayerNorm, eps=1e-3), 8)
    assert isinstance(ln, N.LayerNorm) and ln.eps == 1e-3
    assert N.make_norm("bn", 8, momentum=0.01).momentum == 0.01
    with pytest.raises(TypeError):
        N.make_norm(3, 8)


def test_unknown_norm_lists_the_known_ones():
    with pytest.raises(UnknownName) as err:
        N.make_norm("batchnrom", 8)
    for known in ("batch", "layer", "group", "instance", "none"):
        assert known in str(err.value)
    assert {"batch", "layer", "layer2d", "group", "instance", "none", "batch_seq"} <= set(N.available())


def test_layout_flags():
    assert N.is_channels_last("ln") and N.is_channels_last("batch_seq")
    assert not N.is_channels_last("bn") and not N.is_channels_last("layer2d")
    assert not N.is_norm_activation("bn") and not N.is_norm_activation(None)


class _DummyScaleNorm(nn.Module):
    """Divide by the per-example RMS (a stand-in for a paper's layer, e.g. UnifiedNorm)."""

    def __init__(self, num_features, eps=1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_features))
        self.eps = eps

    def forward(self, x):
        return x / x.pow(2).mean(dim=1, keepdim=True).add(self.eps).sqrt() * self.scale.view(1, -1, *[1] * (x.dim() - 2))


@pytest.fixture
def dummy_norm():
    N.register("dummy_rms", _DummyScaleNorm, aliases=("drms",))
    yield "dummy_rms"
    N.unregister("dummy_rms")


def test_a_methods_module_can_register_a_norm(dummy_norm):
    from replibook.models.mlp import MLP
    from replibook.models.resnet import ResNetCIFAR

    assert "dummy_rms" in N.available() and "drms" in N.available(with_aliases=True)
    assert isinstance(N.make_norm("DRMS", 4), _DummyScaleNorm)
    assert isinstance(N.make_norm("dummy_rms", 4, eps=1e-3), _DummyScaleNorm)
    # the shared models pick it up by name
    mlp = MLP([6, 8, 3], norm="dummy_rms")
    assert isinstance(mlp.hidden[1], _DummyScaleNorm) and mlp(torch.randn(2, 6)).shape == (2, 3)
    net = ResNetCIFAR(depth=8, dim=1, in_channels=1, norm="drms")
    assert isinstance(net.layer2[0].bn2, _DummyScaleNorm)
    assert net(torch.randn(2, 1, 16)).shape == (2, 10)
    # re-registering the same factory (a notebook reloading its module) is fine; another one is not
    N.register("dummy_rms", _DummyScaleNorm, aliases=("drms",))
    with pytest.raises(ValueError, match="already registered"):
        N.register("dummy_rms", N.LayerNorm)
    with pytest.raises(ValueError, match="already registered"):
        N.register("bn", _DummyScaleNorm)
    N.register("dummy_rms", N.LayerNorm2d, overwrite=True)
    assert isinstance(N.make_norm("dummy_rms", 4), N.LayerNorm2d)
    assert "drms" not in N.available(with_aliases=True)


class _DummyNormAct(nn.Module):
    """A norm-activation layer in timm's convention (apply_act), like EvoNorm-S0."""

    def __init__(self, num_features, apply_act=True):
        super().__init__()
        self.apply_act = apply_act
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x):
        y = x * self.weight.view(1, -1, *[1] * (x.dim() - 2))
        return y * torch.sigmoid(y) if self.apply_act else y


def test_norm_activation_layers_replace_the_activation():
    from replibook.models.mlp import MLP
    from replibook.models.resnet import ResNetCIFAR

    N.register("dummy_normact", _DummyNormAct, includes_activation=True)
    try:
        assert N.is_norm_activation("dummy_normact")
        net = ResNetCIFAR(depth=8, dim=1, in_channels=1, norm="dummy_normact")
        block = net.layer1[0]
        assert block.bn1.apply_act and not block.bn2.apply_act
        assert isinstance(block.act1, nn.Identity) and isinstance(net.act1, nn.Identity)
        assert isinstance(block.act2, nn.ReLU)              # after the residual addition
        assert net(torch.randn(2, 1, 16)).shape == (2, 10)
        mlp = MLP([4, 8, 2], norm="dummy_normact")
        assert len(mlp.hidden) == 2 and mlp.hidden[1].apply_act
    finally:
        N.unregister("dummy_normact")
    with pytest.raises(UnknownName):
        N.unregister("dummy_normact")


def test_make_act():
    assert isinstance(N.make_act("relu"), nn.ReLU)
    assert isinstance(N.make_act("GELU"), nn.GELU)
    assert isinstance(N.make_act(None), nn.Identity)
    assert isinstance(N.make_act(nn.Tanh), nn.Tanh)
    with pytest.raises(UnknownName, match="relu"):
        N.make_act("rleu")
