"""MoCo pieces of replibook.train.ssl: queue FIFO, momentum update, logits, the training loop."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import four_blob_images

from replibook.losses.contrastive import info_nce
from replibook.train.ssl import MoCoQueue, moco_logits, moco_pretrain, momentum_update


def test_queue_starts_with_unit_rows_and_is_fifo():
    q = MoCoQueue(dim=3, size=5, generator=torch.Generator().manual_seed(0))
    assert q.keys.shape == (5, 3) and len(q) == 5
    assert torch.allclose(q.keys.norm(dim=1), torch.ones(5), atol=1e-6)
    a = torch.tensor([[2.0, 0, 0], [0, 3.0, 0]])
    q.enqueue(a)
    assert torch.allclose(q.keys[:2], torch.eye(3)[:2])              # normalised, written at the start
    assert q.ptr == 2
    b = torch.tensor([[0, 0, 1.0], [1.0, 1.0, 0], [0, 1.0, 1.0], [1.0, 0, 1.0]])
    old = q.keys.clone()
    q.enqueue(b)                                                     # 2, 3, 4 then wraps to 0
    assert torch.allclose(q.keys[2:], F.normalize(b[:3], dim=1))
    assert torch.allclose(q.keys[0], F.normalize(b[3], dim=0))
    assert torch.allclose(q.keys[1], old[1])                         # the newest of the first batch survives
    assert q.ptr == 1


def test_queue_rejects_bad_shapes():
    q = MoCoQueue(dim=4, size=3)
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(4, 4))


def test_momentum_update_known_answer():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        online.bias.fill_(2.0)
        target.weight.fill_(0.0)
        target.bias.fill_(-1.0)
    momentum_update(online, target, 0.9)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.1))
    assert torch.allclose(target.bias, torch.tensor([-0.9 + 0.2]))
    momentum_update(online, target, 0.0)                             # m = 0 copies
    assert torch.allclose(target.weight, online.weight)
    with pytest.raises(ValueError):
        momentum_update(online, target, 1.5)


def test_moco_logits_equal_info_nce_on_unit_vectors():
    g = torch.Generator().manual_seed(1)
    q, k, queue = (F.normalize(torch.randn(n, 8, generator=g), dim=1) for n in (6, 6, 20))
    logits = moco_logits(q, k, queue, 0.2)
    ce = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(ce, info_nce(q, k, queue, tau=0.2), atol=1e-6)
    # unlike info_nce, moco_logits does not re-normalise
    assert torch.allclose(moco_logits(2 * q, k, queue, 1.0), 2 * moco_logits(q, k, queue, 1.0))


def _images(n=96, seed=0):
    return four_blob_images(n, seed)


def _run(seed=0, steps=30, ft=None, **kw):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten())
    head = nn.Linear(32, 16)
    aug = lambda b, g: (b + 0.05 * torch.randn(b.shape, generator=g)).clamp(0, 1)  # noqa: E731
    return moco_pretrain(enc, head, _images(), steps=steps, batch_size=16, queue_size=64, momentum=0.9, lr=0.05,
                         augment=aug, feature_transform=ft, seed=seed, progress=False, device="cpu", **kw), enc


def test_moco_records_scores():
    run, _ = _run(steps=40, eval_x=_images(16, seed=3), eval_every=10)
    s = run.scores
    assert len(s) == 40 and list(s.step[:2]) == [1, 2]
    assert s.pos[-10:].mean() > s.neg_mean[-10:].mean()              # positives above negatives after training
    assert run.history.steps == [0, 10, 20, 30, 40] and "loss" in run.history.metrics
    # without a transform the transformed columns repeat the plain ones
    assert (s.pos == s.pos_ft).all()
    assert len(run.queue) == 64


def test_moco_lowers_the_contrastive_loss_of_held_out_images():
    # MoCo's own training loss rises at first (the random initial queue is easy), so compare the
    # in-batch InfoNCE of held-out image pairs before and after training, same views for both
    x = _images(32, seed=5)
    g = torch.Generator().manual_seed(9)
    v1, v2 = ((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for _ in range(2))
    before, _ = _run(steps=0)
    run, _ = _run(steps=40)

    def held_out(model):                       # the key model: the momentum average of the online one
        model.eval()
        with torch.no_grad():
            return float(info_nce(model(v1), model(v2), tau=0.2))
    assert held_out(run.key_model) < held_out(before.key_model) - 0.1


def test_moco_is_deterministic_and_calls_the_hook():
    calls = []

    def hook(q, k, queue, generator=None):
        calls.append((q.shape, k.shape, queue.shape))
        assert torch.allclose(q.norm(dim=1), torch.ones(len(q)), atol=1e-5)   # normalised features in
        return 0.5 * q, k, queue

    a, enc_a = _run(seed=1, steps=6, ft=hook)
    b, enc_b = _run(seed=1, steps=6, ft=hook)
    assert len(calls) == 12 and calls[0] == ((16, 16), (16, 16), (64, 16))
    assert torch.equal(a.queue.keys, b.queue.keys)
    for p, r in zip(enc_a.parameters(), enc_b.parameters()):
        assert torch.equal(p, r)
    # the hook's output reached the logits: the transformed positive score is half the plain one
    assert torch.allclose(torch.tensor(a.scores.pos_ft.values), 0.5 * torch.tensor(a.scores.pos.values), atol=1e-5)
    # and the queue holds the ORIGINAL (unit) keys
    assert torch.allclose(a.queue.keys.norm(dim=1), torch.ones(64), atol=1e-5)


def test_moco_rejects_batch_larger_than_queue():
    with pytest.raises(ValueError):
        moco_pretrain(nn.Flatten(), nn.Identity(), torch.rand(8, 1, 2, 2), steps=1, batch_size=8, queue_size=4)


def test_identity_hook_matches_plain_moco():
    # same views and minibatches with or without a hook; an identity hook gives the plain MoCo run
    plain, enc_p = _run(seed=2, steps=5)
    ident, enc_i = _run(seed=2, steps=5, ft=lambda q, k, queue, generator=None: (q, k, queue))
    for p, r in zip(enc_p.parameters(), enc_i.parameters()):
        assert torch.allclose(p, r, atol=1e-5)
    assert torch.allclose(plain.queue.keys, ident.queue.keys, atol=1e-5)
