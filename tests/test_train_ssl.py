"""train.ssl.simclr_pretrain: the loss falls, runs are reproducible, and the encoder learns invariances."""
import torch
from torch import nn

from replibook.train.ssl import simclr_pretrain


def _blobs(n=256, seed=0):
    # 4 classes of 1x8x8 images: a bright square in one quadrant, random intensity and noise
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.5 + 0.3 * torch.rand(1, generator=g).item()
    return x.clamp(0, 1), y


def _nets(seed=0):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 16))
    return enc, nn.Sequential(nn.ReLU(), nn.Linear(16, 8))


def _mild(xb, g):   # flips only: the quadrant code is not flip-invariant, so keep crops mild
    from replibook.data.augment import color_jitter
    return color_jitter(xb, 0.3, 0.3, 0, 0, p=1.0, generator=g)


def _heldout_loss(enc, proj, x):
    from replibook.losses.contrastive import nt_xent
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return nt_xent(proj(enc(_mild(x, g))), proj(enc(_mild(x, g))), 0.5).item()


def test_simclr_pretrain_lowers_the_loss_and_is_deterministic():
    x, _ = _blobs()
    xt, _ = _blobs(n=128, seed=1)
    enc, proj = _nets()
    before = _heldout_loss(enc, proj, xt)
    simclr_pretrain(enc, proj, x, steps=60, batch_size=64, lr=3e-3, augment=_mild, progress=False, schedule=None)
    assert not enc.training
    after = _heldout_loss(enc, proj, xt)
    assert after < before - 0.3, (before, after)
    enc2, proj2 = _nets()
    simclr_pretrain(enc2, proj2, x, steps=60, batch_size=64, lr=3e-3, augment=_mild, progress=False,
                    schedule=None)
    for a, b in zip(enc.parameters(), enc2.parameters()):
        assert torch.equal(a, b)


def test_default_augment_runs_on_rgb():
    x = torch.rand(32, 3, 8, 8)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(192, 8))
    hist = simclr_pretrain(enc, nn.Identity(), x, steps=3, batch_size=16, progress=False)
    assert hist.wall_s > 0
