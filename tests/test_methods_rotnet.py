"""RotNet (methods.rotnet): the pretext loss, rotation accuracy with oracle models, block features,
probe loop, block selection and the data preparation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replibook.methods import rotnet as R
from replibook.models.convnets import NIN


def _marked(n=64, size=8, seed=0):
    """Images whose orientation is obvious: a bright bar along the top rows, noise, and a ramp
    that grows from bottom to top (a local cue a small conv net can read anywhere)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, size, size, generator=g)
    x += torch.linspace(1.0, 0.0, size)[None, None, :, None]
    x[:, :, :2, 1:-1] += 1.0
    return x


class _Oracle(nn.Module):
    """Recognises the rotation of `_marked` images from where the bar is (top/left/bottom/right)."""

    def forward(self, x):
        rows, cols = x.mean((1, 3)), x.mean((1, 2))               # (B, H), (B, W)
        h = x.shape[-1]
        scores = torch.stack([rows[:, :2].mean(1), cols[:, :2].mean(1),     # rot90 (CCW) moves top -> left
                              rows[:, h - 2:].mean(1), cols[:, h - 2:].mean(1)], 1)
        return scores * 100.0


class _Constant(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k, self.dummy = k, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros(len(x), self.k)
        out[:, 0] = 1.0
        return out + 0 * self.dummy


def test_rotnet_loss_is_cross_entropy_over_all_rot90_copies():
    torch.manual_seed(0)
    net = R.make_nin(1, 4, blocks=2, width=4, seed=0).eval()
    x = torch.randn(3, 1, 8, 8)
    manual = torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])
    target = torch.arange(4).repeat_interleave(3)
    torch.testing.assert_close(R.rotnet_loss(net, x, 4), F.cross_entropy(net(manual), target))
    net2 = R.make_nin(1, 2, blocks=2, width=4, seed=0).eval()
    manual2 = torch.cat([x, torch.rot90(x, 2, dims=(2, 3))])
    torch.testing.assert_close(R.rotnet_loss(net2, x, 2), F.cross_entropy(net2(manual2), torch.arange(2).repeat_interleave(3)))


def test_pretext_accuracy_oracle_and_constant_models():
    x = _marked(40)
    y = torch.arange(40) % 5
    res = R.pretext_accuracy(_Oracle(), x, y, k_rot=4, num_classes=5)
    assert res["acc"] == 1.0 and np.allclose(res["per_rotation"], 1) and np.allclose(res["per_class"], 1)
    const = R.pretext_accuracy(_Constant(4), x, y, k_rot=4, num_classes=6, batch_size=7)
    assert const["acc"] == pytest.approx(0.25) and np.allclose(const["per_rotation"], [1, 0, 0, 0])
    assert np.isnan(const["per_class"][5])                         # a class with no image


def test_pretrain_learns_rotations_without_labels_and_is_deterministic():
    x = _marked(128)
    nets = []
    for _ in range(2):
        net = R.make_nin(1, 4, blocks=2, width=6, seed=1)
        R.pretrain(net, x, k_rot=4, steps=100, batch_size=16, lr=5e-3, seed=2, progress=False)
        nets.append(net)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b)
    untrained = R.pretext_accuracy(R.make_nin(1, 4, blocks=2, width=6, seed=1), _marked(64, seed=9))["acc"]
    trained = R.pretext_accuracy(nets[0], _marked(64, seed=9))["acc"]
    assert trained > 0.9 and trained > untrained + 0.3


def test_block_features_are_eval_mode_maps_and_restore_the_mode():
    net = R.make_nin(3, 4, blocks=3, width=5, seed=0)
    x = torch.randn(7, 3, 16, 16)
    net.train()
    feats = R.block_features(net, x, batch_size=3)
    assert net.training and set(feats) == {1, 2, 3}
    assert [tuple(f.shape) for f in feats.values()] == [(7, 5, 8, 8), (7, 5, 4, 4), (7, 5, 4, 4)]
    net.eval()
    with torch.no_grad():
        ref = net.block_maps(x)
    for k in feats:
        torch.testing.assert_close(feats[k], ref[k - 1])
    assert set(R.block_features(net, x, blocks=[2])) == {2}


def test_probe_blocks_reports_every_split_and_a_good_block_wins():
    torch.manual_seed(0)
    y = torch.arange(300) % 3
    informative = F.one_hot(y, 3).float()[:, :, None, None].expand(-1, -1, 2, 2) + 0.1 * torch.randn(300, 3, 2, 2)
    noise = torch.randn(300, 3, 2, 2)
    splits = {"train": torch.arange(200), "val": torch.arange(200, 250), "test": torch.arange(250, 300)}
    out = R.probe_blocks({1: noise, 2: informative}, y, splits, seed=0, steps=60, hidden=(16,))
    assert set(out) == {1, 2} and set(out[1]) == {"train", "val", "test"}
    assert out[2]["test"] > 0.9 and out[2]["val"] > 0.9 and out[1]["test"] < 0.6
    assert R.select_block({b: [s["val"]] for b, s in out.items()}) == 2


def test_select_block_uses_the_mean_and_breaks_ties_early():
    assert R.select_block({1: [0.5, 0.6], 2: [0.9, 0.4], 3: [0.1, 0.2]}) == 2   # means, not seed-wise wins
    assert R.select_block({1: [0.5, 0.75], 2: [0.25, 1.0], 3: [0.0, 0.5]}) == 1  # a tie -> the earlier block


def test_conv_head_and_data_preparation():
    head = R.conv_head(6, 10, width=4, seed=0)
    assert head(torch.randn(2, 6, 4, 4)).shape == (2, 10)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in head.modules())
    x = torch.rand(10, 3, 32, 32)
    small = R.downsample(x, 16)
    assert small.shape == (10, 3, 16, 16) and small.min() >= 0 and small.max() <= 1
    assert R.downsample(x, 32) is x
    tr, te = R.channel_standardize(x * 2 + 1, x)
    torch.testing.assert_close(tr.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.std((0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    assert te.mean() < -1.0                                         # test scaled by the *train* statistics
    ds, x_tr, y_tr, x_te, y_te = R.load_images("digits", 16, 100, 50, seed=0)
    assert x_tr.shape == (100, 1, 16, 16) and x_te.shape == (50, 1, 16, 16) and len(y_tr) == 100
    with pytest.raises(ValueError):
        R.load_images("svhn", 16, 10, 10)


def test_make_nin_is_seeded():
    a, b = R.make_nin(1, 4, blocks=2, width=4, seed=3), R.make_nin(1, 4, blocks=2, width=4, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert isinstance(a, NIN) and not a.return_blocks
