"""EvoNorm-B0 / S0 against the paper's equations, their train/eval behaviour, gradients, the
registry, timm's layers, and the chapter's glue (data, lr scaling, one run, CIFAR-100 loader)."""
import pickle

import numpy as np
import pytest
import torch

from replibook.data import real
from torch import nn

from replibook.data import Dataset, Split
from replibook.errors import DatasetMissing
from replibook.methods import evonorm as E
from replibook.models import norm as N
from replibook.models.resnet import ResNetCIFAR

torch.set_default_dtype(torch.float32)


def randomise(layer, seed=0):
    """Non-trivial gamma, beta, v so the tests see every parameter act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            shift = 0.0 if p is layer.bias else 1.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + shift)
    return layer


def x_of(shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 0.3


# ------------------------------------------------------------------------------ EvoNorm-B0

def test_b0_train_mode_matches_the_equation_written_out():
    layer = randomise(E.EvoNormB0(6).double()).train()
    x = x_of((5, 6, 7))
    y = layer(x)
    ref = E.evonorm_b0_reference(x, layer.weight, layer.bias, layer.v)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)


def test_b0_running_variance_update_and_eval_mode_uses_it_only():
    layer = randomise(E.EvoNormB0(4, momentum=0.1).double()).train()
    x = x_of((8, 4, 5), seed=1)
    layer(x)
    batch_var = x.var(dim=(0, 2), unbiased=False)
    expected = 0.9 * torch.ones(4, dtype=torch.float64) + 0.1 * batch_var
    torch.testing.assert_close(layer.running_var, expected)
    layer.eval()
    running = layer.running_var.clone()
    y = layer(x)
    ref = E.evonorm_b0_reference(x, layer.weight, layer.bias, layer.v, batch_var=running)
    torch.testing.assert_close(y, ref)
    assert torch.equal(layer.running_var, running)         # eval does not update it
    # in eval mode an example's output does not depend on the rest of the batch
    other = x.clone()
    other[1:] = x_of((7, 4, 5), seed=9)
    torch.testing.assert_close(layer(other)[0], y[0])
    # ... and it differs from train mode (batch statistics)
    assert not torch.allclose(layer.train()(x), y)


def test_b0_unbiased_running_variance_option():
    layer = E.EvoNormB0(3, momentum=1.0, unbiased_running_var=True).double().train()
    x = x_of((4, 3, 5), seed=2)
    layer(x)
    torch.testing.assert_close(layer.running_var, x.var(dim=(0, 2), unbiased=True))


def test_b0_without_activation_is_the_affine_map_only():
    layer = randomise(E.EvoNormB0(4, apply_act=False).double())
    assert layer.v is None and layer.running_var is None
    x = x_of((3, 4, 5))
    affine = x * layer.weight.view(1, -1, 1) + layer.bias.view(1, -1, 1)
    torch.testing.assert_close(layer(x), affine)


# ------------------------------------------------------------------------------ EvoNorm-S0

@pytest.mark.parametrize("groups", [1, 2, 4])
def test_s0_matches_the_equation_with_group_statistics(groups):
    layer = randomise(E.EvoNormS0(8, groups=groups).double())
    x = x_of((3, 8, 6), seed=groups)
    ref = E.evonorm_s0_reference(x, layer.weight, layer.bias, layer.v, groups)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)


def test_s0_group_std_known_answer():
    layer = E.EvoNormS0(4, groups=2, eps=0.0).double()
    # example 0: group 0 holds {0, 2} everywhere -> var 1; group 1 holds {1, 1, 5, 5}... -> var 4
    x = torch.tensor([[[0.0, 2.0], [2.0, 0.0], [1.0, 5.0], [5.0, 1.0]]], dtype=torch.float64)
    std = layer.group_std(x)
    expected = torch.tensor([[[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 2], dtype=torch.float64)
    torch.testing.assert_close(std, expected)


def test_s0_is_per_example_and_the_same_in_train_and_eval():
    layer = randomise(E.EvoNormS0(8))
    x = x_of((6, 8, 10), dtype=torch.float32)
    y = layer.train()(x)
    other = x.clone()
    other[1:] *= 7.0
    torch.testing.assert_close(layer(other)[0], y[0])
    torch.testing.assert_close(layer.eval()(x), y)


def test_s0_default_groups_follow_the_book_groupnorm_rule():
    assert [E.EvoNormS0(c).groups for c in (16, 32, 64, 4)] == [4, 8, 8, 1]
    assert E.EvoNormS0(64).groups == N.make_norm("gn", 64).num_groups
    with pytest.raises(ValueError, match="divisible"):
        E.EvoNormS0(10, groups=4)


# ------------------------------------------------------------------------- both layers

@pytest.mark.parametrize("cls", [E.EvoNormB0, E.EvoNormS0])
def test_gradients_match_finite_differences(cls):
    layer = randomise(cls(4).double()).train()
    x = x_of((3, 4, 5), seed=5).requires_grad_(True)
    names, params = zip(*layer.named_parameters())

    def f(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [E.EvoNormB0, E.EvoNormS0])
def test_layers_work_in_2d_and_reject_inputs_without_positions(cls):
    layer = cls(8)
    assert layer(torch.randn(2, 8, 3, 4)).shape == (2, 8, 3, 4)
    with pytest.raises(ValueError, match="spatial"):
        layer(torch.randn(4, 8))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(2, 7, 5))


def test_timm_equivalence_in_2d():
    timm_evo = pytest.importorskip("timm.layers.evo_norm")
    x = torch.randn(4, 16, 5, 5) * 1.5
    ours_b0 = randomise(E.EvoNormB0(16, momentum=0.1, eps=1e-5))
    theirs_b0 = timm_evo.EvoNorm2dB0(16, momentum=0.1, eps=1e-5)
    theirs_b0.load_state_dict({"weight": ours_b0.weight, "bias": ours_b0.bias, "v": ours_b0.v,
                               "running_var": ours_b0.running_var})
    torch.testing.assert_close(ours_b0.train()(x), theirs_b0.train()(x), rtol=1e-5, atol=1e-5)
    theirs_b0.running_var.copy_(ours_b0.running_var)        # timm's update uses n / (n - 1)
    torch.testing.assert_close(ours_b0.eval()(x), theirs_b0.eval()(x), rtol=1e-5, atol=1e-5)
    ours_s0 = randomise(E.EvoNormS0(16, groups=4, eps=1e-5))
    theirs_s0 = timm_evo.EvoNorm2dS0(16, groups=4, eps=1e-5)
    theirs_s0.load_state_dict(ours_s0.state_dict())
    torch.testing.assert_close(ours_s0(x), theirs_s0(x), rtol=1e-5, atol=1e-5)
    for ours, theirs in ((E.EvoNormB0, timm_evo.EvoNorm2dB0), (E.EvoNormS0, timm_evo.EvoNorm2dS0)):
        a, b = randomise(ours(16, apply_act=False)), theirs(16, apply_act=False)
        b.load_state_dict(a.state_dict(), strict=False)
        torch.testing.assert_close(a(x), b(x))


# --------------------------------------------------------------------------- registry

def test_registered_as_norm_activation_layers_and_used_by_the_resnet():
    for name, cls in (("evonorm_b0", E.EvoNormB0), ("EvoNorm-S0", E.EvoNormS0)):
        assert N.is_norm_activation(name)
        assert isinstance(N.make_norm(name, 16, apply_act=True), cls)
    model = ResNetCIFAR(8, width=16, dim=1, in_channels=1, norm_act="evonorm_b0", shortcut="B")
    assert isinstance(model.bn1, E.EvoNormB0) and model.bn1.apply_act
    assert isinstance(model.act1, nn.Identity)
    block = model.layer2[0]
    assert block.bn1.apply_act and not block.bn2.apply_act and not block.shortcut[1].apply_act
    assert isinstance(block.act2, nn.ReLU)                 # the ReLU after the addition stays
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)


def test_build_model_layers():
    kinds = {"BN-ReLU": N.BatchNorm, "GN-ReLU": N.GroupNorm, "EvoNorm-B0": E.EvoNormB0,
             "EvoNorm-S0": E.EvoNormS0}
    for layer, cls in kinds.items():
        model = E.build_model(layer, depth=8, width=16, dim=1, in_channels=1, num_classes=10)
        assert isinstance(model.layer3[0].bn1, cls)
    with pytest.raises(ValueError, match="unknown layer"):
        E.build_model("LN", 8, 16, 1, 1, 10)


# ------------------------------------------------------------------------------ glue

def test_scaled_lr_linear_rule_with_floor():
    assert E.scaled_lr(0.05, 128) == pytest.approx(0.05)
    assert E.scaled_lr(0.05, 32) == pytest.approx(0.0125)
    assert E.scaled_lr(0.05, 8) == pytest.approx(0.005)     # 0.003125 floored


def tiny_dataset(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(Split(x[:32], y[:32]), Split(x[32:], y[32:]), name="toy", source="test")


def test_train_run_is_deterministic_and_finite():
    data = tiny_dataset()
    out = []
    for _ in range(2):
        model, hist = E.train_run(data, "EvoNorm-S0", depth=8, width=8, batch_size=8, steps=3,
                                  base_lr=0.05, seed=1, eval_every=3, device="cpu")
        weights = model.linear.weight.detach().clone()
        out.append((hist.last("test_acc"), hist.train_loss[-1], weights))
        assert np.isfinite(hist.train_loss[-1])
    assert out[0][0] == out[1][0] and out[0][1] == out[1][1] and torch.equal(out[0][2], out[1][2])


def test_layer_graphs_are_acyclic_and_end_in_the_output():
    for name, graph in E.LAYER_GRAPHS.items():
        depth = E._depths(graph)
        assert max(depth, key=depth.get) == "y"
        assert all(p in graph for _, parents in graph.values() for p in parents)


def write_fake_cifar100(root, n_train=6, n_test=4):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        data = np.stack([np.full(3 * 32 * 32, i, dtype=np.uint8) for i in range(n)])
        data[:, 1024:2048] = 200                           # green plane of the CHW row layout
        d = {"data": data, "fine_labels": [(7 * i) % 100 for i in range(n)],
             "coarse_labels": [i % 20 for i in range(n)],
             "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh)
    return root


def test_cifar100_loader_reads_the_torchvision_layout(tmp_path):
    root = write_fake_cifar100(tmp_path)
    ds = real.cifar100(root=root, device="cpu")
    assert ds.train.x.shape == (6, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.train.y.tolist() == [0, 7, 14, 21, 28, 35]
    assert float(ds.train.x[3, 0, 0, 0]) == pytest.approx(3 / 255)
    assert float(ds.train.x[3, 1, 5, 5]) == pytest.approx(200 / 255)   # channel order kept
    sub = real.cifar100(root=root, n_train=3, n_test=2, seed=0, device="cpu")
    assert len(sub.train) == 3 and len(sub.test) == 2
    with pytest.raises(DatasetMissing, match="CIFAR-100"):
        real.cifar100(root=tmp_path / "nowhere", device="cpu")


def test_load_data_mnist1d_is_channel_first():
    ds = E.load_data("mnist1d", n_train=100, n_test=50, device="cpu")
    assert ds.train.x.shape == (100, 1, 40) and ds.test.x.shape == (50, 1, 40)
    with pytest.raises(ValueError, match="unknown dataset"):
        E.load_data("imagenet")


@pytest.mark.parametrize("cls", [E.EvoNormB0, E.EvoNormS0])
def test_half_precision_inputs_use_float32_statistics(cls):
    x = x_of((4, 16, 10), dtype=torch.float32)
    ref = randomise(cls(16)).train()(x)
    out = randomise(cls(16)).train()(x.bfloat16())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
