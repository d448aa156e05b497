"""`train.freeze`: which parameters train, known-answer counts, frozen values that never move."""
import pytest
import torch
from torch import nn

from replibook.models.resnet import ResNetCIFAR
from replibook.train import fit
from replibook.train.freeze import (RandomKPerChannel, bn_parameter_names, count_parameters,
                                    freeze_all_but, freeze_all_but_bn, frozen_tensors,
                                    random_k_per_channel, trainable_mask, trainable_names)

# ResNet-8 (one block per stage), width 16, 1-D, option-B shortcuts: BatchNorm channels are
# stem 16 + stage 1 (16 + 16) + stage 2 (32 + 32 + 32 shortcut) + stage 3 (64 + 64 + 64) = 336.
BN_CHANNELS_R8_B = 336
# Option A has no shortcut BN: 16 + 32 + 64 + 128 = 240.
BN_CHANNELS_R8_A = 240


def resnet8(shortcut="B", seed=0):
    torch.manual_seed(seed)
    return ResNetCIFAR(8, num_classes=10, width=16, dim=1, in_channels=1, shortcut=shortcut)


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def effective_weights(model):
    """Every conv/linear weight as the forward pass sees it (through parametrizations)."""
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}


def test_bn_only_count_is_twice_the_bn_channels():
    for shortcut, channels in (("B", BN_CHANNELS_R8_B), ("A", BN_CHANNELS_R8_A)):
        model = resnet8(shortcut)
        names = freeze_all_but_bn(model)
        assert count_parameters(model) == 2 * channels
        assert all(n.endswith((".weight", ".bias")) for n in names)
        assert all("bn" in n or "shortcut.1." in n for n in names)
        assert trainable_names(model) == names


def test_gamma_only_beta_only_and_bn_plus_output_counts():
    model = resnet8()
    freeze_all_but_bn(model, beta=False)
    assert count_parameters(model) == BN_CHANNELS_R8_B
    assert all(n.endswith(".weight") for n in trainable_names(model))
    freeze_all_but_bn(model, gamma=False)
    assert count_parameters(model) == BN_CHANNELS_R8_B
    assert all(n.endswith(".bias") for n in trainable_names(model))
    freeze_all_but_bn(model, also=r"^linear\.")
    assert count_parameters(model) == 2 * BN_CHANNELS_R8_B + 64 * 10 + 10


def test_freeze_all_but_regex_list_and_predicate():
    model = resnet8()
    assert freeze_all_but(model, r"^linear\.") == ["linear.weight", "linear.bias"]
    assert count_parameters(model) == 650
    names = freeze_all_but(model, [r"^conv1\.", r"^linear\.weight$"])
    assert names == ["conv1.weight", "linear.weight"]
    assert count_parameters(model) == 16 * 1 * 3 + 640
    freeze_all_but(model, lambda n, p: p.dim() == 1)
    assert count_parameters(model) == 2 * BN_CHANNELS_R8_B + 10
    assert count_parameters(model, trainable=False) == sum(p.numel() for p in model.parameters())


def test_bad_selections_fail_loudly():
    model = resnet8()
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_all_but(model, r"^no_such_layer")
    assert freeze_all_but(model, r"^no_such_layer", allow_empty=True) == []
    with pytest.raises(ValueError, match="nothing left to train"):
        freeze_all_but_bn(model, gamma=False, beta=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        freeze_all_but_bn(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="k must be"):
        random_k_per_channel(resnet8(), k=4)   # the stem conv has fan-in 1 x 3


def test_bn_parameter_names_in_module_order():
    names = bn_parameter_names(resnet8())
    assert names[:2] == ["bn1.weight", "bn1.bias"]
    assert "layer2.0.shortcut.1.weight" in names
    assert len(names) == 2 * 9          # BNs: 1 stem + 3 blocks x 2 + 2 shortcuts


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_frozen_weights_bit_identical_after_fit_with_momentum_and_weight_decay(opt):
    model = resnet8()
    freeze_all_but_bn(model)
    frozen = frozen_tensors(model)
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x, y = toy_data()
    fit(model, (x, y), steps=4, batch_size=16, lr=0.1, opt=opt, weight_decay=0.1, progress=False,
        device="cpu")
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trained_before.items())


def test_random_k_per_channel_counts_and_init_is_unchanged_network():
    model = resnet8()
    x, _ = toy_data(8)
    model.eval()
    before = model(x)
    names = random_k_per_channel(model, k=2, seed=3)
    # every conv is followed by one BN: 2 per channel == the BN-only count
    assert count_parameters(model) == 2 * BN_CHANNELS_R8_B
    assert len(names) == 9 and all(n.endswith("parametrizations.weight.0.values") for n in names)
    assert torch.equal(model(x), before)          # values start at the original weights
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            mask = trainable_mask(m)
            assert mask.shape == m.weight.shape
            assert torch.equal(mask.flatten(1).sum(1), torch.full((m.out_channels,), 2))
    assert trainable_mask(model.linear) is None


def test_random_k_changes_only_the_chosen_weights_under_sgd_weight_decay():
    model = resnet8()
    random_k_per_channel(model, k=2, seed=0)
    before = effective_weights(model)
    x, y = toy_data()
    fit(model, (x, y), steps=4, batch_size=16, lr=0.1, opt="sgd", weight_decay=0.1, progress=False,
        device="cpu")
    after = effective_weights(model)
    assert torch.equal(after["linear"], before["linear"])
    changed_somewhere = False
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d):
            mask = trainable_mask(m)
            assert torch.equal(after[name][~mask], before[name][~mask])      # frozen: bit-identical
            changed_somewhere |= not torch.equal(after[name][mask], before[name][mask])
    assert changed_somewhere
    bn = model.bn1
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))


def test_random_k_is_seeded():
    def index_of(seed):
        model = resnet8()
        random_k_per_channel(model, k=2, seed=seed)
        return torch.cat([p.index.flatten() for p in model.modules()
                          if isinstance(p, RandomKPerChannel)])
    assert torch.equal(index_of(0), index_of(0))
    assert not torch.equal(index_of(0), index_of(1))
    # positions are distinct within each channel (drawn without replacement)
    model = resnet8()
    random_k_per_channel(model, k=3, seed=0)
    for p in model.modules():
        if isinstance(p, RandomKPerChannel):
            assert all(len(set(row.tolist())) == 3 for row in p.index)


def test_random_k_refuses_a_second_parametrization():
    model = resnet8()
    random_k_per_channel(model, k=1)
    with pytest.raises(ValueError, match="already"):
        random_k_per_channel(model, k=1)


def test_random_k_on_2d_convs():
    torch.manual_seed(0)
    model = ResNetCIFAR(8, width=4, dim=2, shortcut="B")
    random_k_per_channel(model, k=3, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert count_parameters(model) == 3 * sum(m.out_channels for m in convs)
    out = model(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
