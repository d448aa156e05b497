"""ELA and the attention baselines (SE, ECA, Coordinate Attention) of the ELA chapter."""
import pickle

import numpy as np
import pytest
import torch

from replibook.data.augment import random_crop_flip
import torch.nn.functional as F

from replibook.errors import DatasetMissing
from replibook.methods import efficient_local_attention as E


def _x(b=2, c=16, h=6, w=5, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", [n for n in E.ATTENTIONS if n != "none"])
def test_every_attention_keeps_the_shape_and_passes_gradients(name):
    torch.manual_seed(0)
    block = E.attention_factory(name)(16)
    x = _x().requires_grad_()
    y = block(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters())


def test_ela_matches_its_equation_step_by_step():
    torch.manual_seed(0)
    block = E.ELA(16, kernel_size=5, conv_groups=2, norm="gn", gn_groups=4)
    x = _x()
    z_h, z_w = x.mean(3), x.mean(2)                                   # (B, C, H), (B, C, W)
    w = block.conv.weight

    def branch(z):
        return torch.sigmoid(F.group_norm(F.conv1d(z, w, padding=2, groups=2), 4,
                                          block.norm.weight, block.norm.bias))
    expected = x * branch(z_h)[..., :, None] * branch(z_w)[..., None, :]
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_ela_positional_encoding_differs_from_a_global_gate():
    # a feature map that is bright in one corner: ELA gates rows and columns differently
    torch.manual_seed(0)
    block = E.ELA(16, kernel_size=3)
    x = torch.zeros(1, 16, 8, 8)
    x[..., :2, :2] = 1.0
    block.keep_maps = True
    block(x)
    y_h, y_w = block.last_maps
    assert y_h.shape == (1, 16, 8) and y_w.shape == (1, 16, 8)
    assert (y_h[..., :2].mean() - y_h[..., 4:].mean()).abs() > 1e-3


def test_ela_parameter_counts():
    # ELA-S on C=64: grouped conv with C/8 groups of 8 channels, k=5, plus GN weight and bias
    assert sum(p.numel() for p in E.ela("S")(64).parameters()) == 64 * (64 // 8) * 5 + 2 * 64
    # ELA-T: depthwise, k=5: 5C + 2C
    for c in (16, 32, 64):
        assert sum(p.numel() for p in E.ela("T")(c).parameters()) == 7 * c
        assert sum(p.numel() for p in E.ela("S")(c).parameters()) == 42 * c
    # GN groups capped at C // 4 (16 channels -> 4 groups)
    assert E.ela("S")(16).norm.num_groups == 4 and E.ela("S")(64).norm.num_groups == 16
    assert E.ela("T")(64).norm.num_groups == 16 and E.ela("L")(64).conv.kernel_size == (7,)
    assert isinstance(E.ela("S", norm="bn")(32).norm, torch.nn.BatchNorm1d)
    with pytest.raises(ValueError):
        E.ela("XL")
    with pytest.raises(ValueError):
        E.ELA(16, norm="ln")


def test_baseline_parameter_counts_and_ranges():
    # CA with r=32 and an 8-channel floor: conv1 (C*8+8) + BN (16) + two convs (8*C+C)
    for c, expected in ((16, 440), (32, 856), (64, 1688)):
        assert sum(p.numel() for p in E.CoordAttention(c).parameters()) == expected
    # SE with hidden max(8, C // 16)
    assert sum(p.numel() for p in E.SE(64).parameters()) == 64 * 8 + 8 + 8 * 64 + 64
    # ECA's adaptive kernel: C=16 -> 3, C=256 -> 5, C=512 -> 5
    assert [E.ECA(c).kernel_size for c in (16, 64, 256, 512)] == [3, 3, 5, 5]
    x = _x().abs()
    for block in (E.SE(16), E.ECA(16), E.CoordAttention(16).eval(), E.ELA(16)):
        y = block(x)
        assert bool((y <= x + 1e-6).all() and (y >= 0).all())   # sigmoid gates lie in (0, 1)


def test_make_resnet_places_attention_on_each_branch_and_counts_params():
    plain = E.make_resnet("none")
    with_ela = E.make_resnet("ELA-S")
    assert E.attention_params(plain) == 0
    assert E.attention_params(with_ela) == 42 * (16 + 32 + 64)
    n_with = sum(p.numel() for p in with_ela.parameters())
    assert n_with - sum(p.numel() for p in plain.parameters()) == E.attention_params(with_ela)
    assert with_ela.conv1.stride == (2, 2)
    x = torch.rand(3, 1, 24, 24)
    assert with_ela(x).shape == (3, 10)
    stage_outputs = with_ela.stage_outputs(x)
    assert stage_outputs["layer1"].shape[-1] == 12 and stage_outputs["layer3"].shape[-1] == 3
    assert isinstance(with_ela.layer2[0].attn, E.ELA)
    with pytest.raises(ValueError):
        E.make_resnet("GC")


def test_training_is_deterministic_and_maps_have_image_size():
    from replibook.data import Dataset, Split
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 24, 24, generator=g), torch.randint(0, 10, (64,), generator=g)
    ds = Dataset(Split(x, y), Split(x[:16], y[:16]), name="fake", source="test",
                 classes=[str(i) for i in range(10)])
    runs = [E.train_classifier(ds, "ELA-S", steps=3, batch_size=16, lr=1e-2, weight_decay=0.05,
                               seed=2, device="cpu") for _ in range(2)]
    assert runs[0][1].metrics["test_acc"] == runs[1][1].metrics["test_acc"]
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)
    maps = E.ela_maps(runs[0][0], x[:4])
    assert maps.shape == (4, 24, 24) and bool((maps > 0).all() and (maps < 1).all())
    with pytest.raises(ValueError):
        E.ela_maps(E.make_resnet("CA"), x[:2])
    top_left = torch.tensor([[0, 0], [12, 12], [5, 3], [1, 9]])
    assert E.map_inside_ratio(torch.ones(4, 24, 24), top_left, 12) == pytest.approx(1.0)
    peaked = torch.zeros(4, 24, 24) + 0.1
    for i, (r, c) in enumerate(top_left.tolist()):
        peaked[i, r:r + 12, c:c + 12] = 0.9
    assert E.map_inside_ratio(peaked, top_left, 12) == pytest.approx(9.0)
    assert E.cpu_latency_ms(runs[0][0], x[:8], repeats=2) > 0


def test_random_crop_flip_is_a_shifted_or_mirrored_window():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, 2, g)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        found = any(torch.equal(out[i], win) or torch.equal(out[i], win.flip(-1))
                    for dy in range(5) for dx in range(5)
                    for win in [padded[i, :, dy:dy + 8, dx:dx + 8]])
        assert found
    assert not torch.equal(out, random_crop_flip(x, 2, torch.Generator().manual_seed(1)))
    assert E.make_resnet("ELA-S", depth=20, in_channels=3, num_classes=100, stem_stride=1)(
        torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_cifar100_loader_reads_torchvision_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for name, n in (("train", 6), ("test", 4)):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = list(range(n))
        entry = {b"filenames": [b"x.png"] * n, b"batch_label": b"fake", b"fine_labels": labels,
                 b"coarse_labels": [0] * n, b"data": images.reshape(n, -1)}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        expected[name] = (images, labels)
    ds = E.load_cifar100(tmp_path, device="cpu")
    assert ds.train.x.shape == (6, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    decoded = (ds.test.x * 255).round().to(torch.uint8)
    assert torch.equal(decoded, torch.from_numpy(expected["test"][0]))
    assert ds.train.y.tolist() == expected["train"][1] and len(ds.classes) == 100
    with pytest.raises(DatasetMissing):
        E.load_cifar100(tmp_path / "missing", device="cpu")
