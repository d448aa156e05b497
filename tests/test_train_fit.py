import math

import torch
from torch import nn

from replibook.metrics.classification import accuracy, predict
from replibook.train import fit


def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 3.0 * (y[:, None].float() * 2 - 1)
    return x, y


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def test_fit_learns_and_counts_updates():
    x, y = blobs()
    m = model()
    calls = []
    orig = torch.optim.Adam.step

    def counting_step(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)
    torch.optim.Adam.step = counting_step
    try:
        hist = fit(m, (x, y), steps=150, batch_size=32, lr=1e-2, progress=False, device="cpu",
                   eval_fn=lambda mod: {"acc": accuracy(predict(mod, x), y)}, eval_every=50)
    finally:
        torch.optim.Adam.step = orig
    assert len(calls) == 150                      # exactly the update budget
    assert hist.steps == [0, 50, 100, 150]          # eval at 0, every 50 and at the end
    assert hist.metrics["acc"][-1] > 0.95
    assert math.isnan(hist.train_loss[0]) and hist.train_loss[-1] < hist.train_loss[1]
    assert not m.training


def test_fit_is_deterministic_for_a_seed():
    x, y = blobs()
    a, b, c = model(), model(), model()
    fit(a, (x, y), steps=40, batch_size=16, seed=1, progress=False, device="cpu")
    fit(b, (x, y), steps=40, batch_size=16, seed=1, progress=False, device="cpu")
    fit(c, (x, y), steps=40, batch_size=16, seed=2, progress=False, device="cpu")
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(c))


def test_fit_custom_loss_clip_and_cosine():
    x, y = blobs(100)
    m = model()
    seen = []

    def loss_fn(mod, xb, yb):
        seen.append(xb.shape[0])
        return nn.functional.cross_entropy(mod(xb), yb)
    fit(m, (x, y), steps=10, batch_size=32, loss_fn=loss_fn, clip=0.1, schedule="cosine",
        progress=False, device="cpu")
    assert seen == [32] * 10


def test_batch_larger_than_data_is_capped():
    x, y = blobs(10)
    hist = fit(model(), (x, y), steps=3, batch_size=64, progress=False, device="cpu",
               eval_fn=lambda m: {"acc": 0.0})
    assert hist.steps == [0, 3]
