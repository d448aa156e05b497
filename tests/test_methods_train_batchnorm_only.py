"""Chapter `train-batchnorm-only`: the OpenLTH BN init, the variants' trainable counts, one run,
and `analysis.bn` (gamma values, fractions, histograms) with known answers."""
import numpy as np
import pytest
import torch

from replibook.data.augment import random_crop_flip
from torch import nn

from replibook.analysis import bn as A
from replibook.data import Dataset, Split
from replibook.methods import evonorm
from replibook.methods import train_batchnorm_only as T
from replibook.train.freeze import count_parameters

BN_CHANNELS_R8 = 336          # ResNet-8, width 16, option-B shortcuts (see test_train_freeze)
ALL_R8 = 28_506               # every parameter of that network (1-D, 1 input channel, 10 classes)


def model8(seed=0, bn_init="uniform"):
    return T.build_model(8, 16, dim=1, in_channels=1, bn_init=bn_init, seed=seed)


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_uniform_bn_init_is_openlth_default_and_seeded():
    model = model8()
    gammas = torch.cat([m.weight.detach() for m in bns(model)])
    betas = torch.cat([m.bias.detach() for m in bns(model)])
    assert gammas.numel() == BN_CHANNELS_R8
    assert float(gammas.min()) >= 0.0 and float(gammas.max()) <= 1.0 and float(gammas.std()) > 0.2
    assert torch.equal(betas, torch.zeros_like(betas))
    again = torch.cat([m.weight.detach() for m in bns(model8())])
    other = torch.cat([m.weight.detach() for m in bns(model8(seed=1))])
    assert torch.equal(gammas, again) and not torch.equal(gammas, other)
    fixed = torch.cat([m.weight.detach() for m in bns(model8(bn_init="fixed"))])
    assert torch.equal(fixed, torch.ones_like(fixed))
    with pytest.raises(ValueError, match="unknown BatchNorm init"):
        T.init_bn_affine(model, "normal")


def test_variant_trainable_counts_known_answer():
    expected = {"All": ALL_R8, "BN-only": 2 * BN_CHANNELS_R8, "Output-only": 64 * 10 + 10,
                "BN+Output": 2 * BN_CHANNELS_R8 + 650, "Random-2/channel": 2 * BN_CHANNELS_R8,
                "Gamma-only": BN_CHANNELS_R8, "Beta-only": BN_CHANNELS_R8}
    assert set(expected) == set(T.VARIANTS)
    for variant, count in expected.items():
        model = model8()
        assert T.apply_variant(model, variant, seed=0) == count, variant
        assert T.bn_channel_count(model) == BN_CHANNELS_R8
    assert count_parameters(model8(), trainable=False) == ALL_R8
    with pytest.raises(ValueError, match="unknown variant"):
        T.apply_variant(model8(), "Conv-only")


def test_same_seed_same_random_features_in_every_variant():
    a, b = model8(seed=4), model8(seed=4)
    T.apply_variant(b, "Random-2/channel", seed=4)
    assert torch.equal(a.layer2[0].conv1.weight, b.layer2[0].conv1.weight)   # values start at W
    assert torch.equal(a.linear.weight, b.linear.weight)


def toy(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset(Split(x[:32], y[:32]), Split(x[32:], y[32:]), name="toy", source="test")


def test_train_variant_bn_only_moves_only_bn_and_is_deterministic():
    data = toy()
    init = model8(seed=2)
    results = []
    for _ in range(2):
        model, hist, n = T.train_variant(data, "BN-only", depth=8, width=16, steps=3,
                                         batch_size=16, lr=0.01, seed=2, device="cpu")
        assert n == 2 * BN_CHANNELS_R8 and hist.steps == [0, 3]
        results.append(model)
    trained, again = results
    assert torch.equal(trained.layer3[0].conv2.weight, init.layer3[0].conv2.weight)
    assert torch.equal(trained.linear.weight, init.linear.weight)
    assert not torch.equal(trained.bn1.weight, init.bn1.weight)
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), again.parameters()))


def test_load_data_shapes_and_unknown_name():
    ds = T.load_data("mnist1d", n_train=100, n_test=50, device="cpu")
    assert ds.train.x.shape == (100, 1, 40)
    with pytest.raises(ValueError, match="unknown dataset"):
        T.load_data("svhn")


def test_gamma_table_and_figures_run():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = {"BN-only": [model8(0), model8(1)], "All": [model8(2)]}
    table = T.gamma_table(models, threshold=0.05)
    assert table.shape == (9, 2) and ((table >= 0) & (table <= 1)).all().all()
    fig, axes = plt.subplots(1, 3)
    T.plot_depth_trend(axes[0], [8, 20], {"BN-only": {8: [0.5, 0.6], 20: [0.7, 0.72]}})
    T.plot_variant_bars(axes[1], ["All", "BN-only"], [[0.9, 0.91], [0.6, 0.62]], [100, 10])
    T.plot_gamma_histograms(axes[2], {"BN-only": np.abs(np.random.randn(50))},
                            bins=np.linspace(0, 3, 11))
    plt.close(fig)


# ------------------------------------------------------------------------ analysis.bn

def set_gammas(model, values):
    values = torch.as_tensor(values, dtype=torch.float32)
    i = 0
    with torch.no_grad():
        for m in bns(model):
            m.weight.copy_(values[i:i + m.num_features])
            i += m.num_features
    assert i == len(values)


def test_fraction_below_known_answer():
    model = model8()
    vals = torch.linspace(-1, 1, BN_CHANNELS_R8)          # |gamma| < 0.5 for the middle half
    set_gammas(model, vals)
    expected = float((vals.abs() < 0.5).float().mean())
    assert A.fraction_below(model, 0.5) == pytest.approx(expected)
    assert A.fraction_below([np.array([0.0, 0.01]), np.array([-0.2, 3.0])], 0.05) == 0.5
    assert A.fraction_below({"a": np.array([0.04, -0.04, 0.06])}, 0.05) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no gamma"):
        A.fraction_below(nn.Linear(2, 2))


def test_per_layer_fraction_and_affine_values():
    model = model8()
    set_gammas(model, torch.cat([torch.zeros(16), torch.ones(BN_CHANNELS_R8 - 16)]))
    table = A.per_layer_fraction_below(model, 0.05)
    assert list(table.index[:2]) == ["bn1", "layer1.0.bn1"] and len(table) == 9
    assert table.loc["bn1", "fraction_below"] == 1.0
    assert table["fraction_below"].iloc[1:].eq(0).all()
    assert table["channels"].sum() == BN_CHANNELS_R8
    betas = A.affine_values(model, "bias")
    assert sum(v.size for v in betas.values()) == BN_CHANNELS_R8


def test_gamma_histogram_known_answer():
    counts, edges = A.gamma_histogram(np.array([0.1, -0.1, 0.3, 0.9, 1.0]), bins=[0, 0.2, 0.5, 1.0])
    assert counts.tolist() == [2, 1, 2] and edges.tolist() == [0, 0.2, 0.5, 1.0]
    counts, edges = A.gamma_histogram(model8(), bins=10)
    assert counts.sum() == BN_CHANNELS_R8 and edges[0] == 0.0 and len(edges) == 11
    signed, _ = A.gamma_histogram(np.array([-1.0, 1.0]), bins=2, absolute=False)
    assert signed.tolist() == [1, 1]
    dens, edges = A.gamma_histogram(np.array([0.1, 0.3]), bins=[0, 0.2, 0.4], density=True)
    assert float((dens * np.diff(edges)).sum()) == pytest.approx(1.0)


def test_analysis_reads_evonorm_parameters_with_types():
    model = evonorm.build_model("EvoNorm-B0", 8, 16, 1, 1, 10)
    vs = A.affine_values(model, "v", types=(evonorm.EvoNormB0,))
    assert len(vs) == 4                   # only the layers with apply_act have v
    assert all(np.all(v == 1.0) for v in vs.values())
    gammas = A.affine_values(model, types=(evonorm.EvoNormB0,))
    assert len(gammas) == 9


def test_random_crop_flip_known_answer():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3) + 1
    torch.manual_seed(0)
    out = random_crop_flip(x, pad=1)
    assert out.shape == x.shape
    for b in range(2):
        padded = torch.nn.functional.pad(x[b:b + 1], (1, 1, 1, 1), mode="reflect")[0, 0]
        windows = [padded[i:i + 3, j:j + 3] for i in range(3) for j in range(3)]
        assert any(torch.equal(out[b, 0], w) or torch.equal(out[b, 0], w.flip(1)) for w in windows)
    same = random_crop_flip(x, pad=0)                      # no padding: identity or a flip
    assert all(torch.equal(same[b], x[b]) or torch.equal(same[b], x[b].flip(-1)) for b in range(2))
    seq = torch.randn(4, 1, 40)
    assert random_crop_flip(seq) is seq                    # 1-D signals are left alone
