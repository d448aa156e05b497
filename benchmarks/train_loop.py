"""Throughput of `replibook.train.fit` against a minimal hand-written loop.

Both train the same MLP (784-256-256-10, LayerNorm) on the same tensors held on the
device, with the same optimiser, batch size and number of updates; `fit` also
evaluates twice (at step 0 and at the end) as a chapter would. Each variant runs
`--repeats` times, interleaved, and the best time counts (least disturbed by other
work on the machine). Prints images/s of each and their ratio (target >= 0.9).

    python benchmarks/train_loop.py [--steps 300] [--batch-size 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from replibook import runtime
from replibook.metrics.classification import accuracy, predict
from replibook.models.mlp import MLP
from replibook.train import fit


def make_data(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 784, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def hand_written(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = MLP([784, 256, 256, 10], norm="ln").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x.shape[0]
    start = time.perf_counter()
    perm, pos = torch.randperm(n, device=device), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, device=device), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def with_fit(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = MLP([784, 256, 256, 10], norm="ln")
    x_eval, y_eval = x[:1000], y[:1000]
    start = time.perf_counter()
    fit(model, (x, y), steps=steps, batch_size=batch_size, lr=1e-3, device=device, progress=False,
        eval_fn=lambda m: {"acc": accuracy(predict(m, x_eval), y_eval)}, eval_every=steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = runtime.device(args.device)
    x, y = make_data(8192, device)
    hand_written(x, y, 20, args.batch_size, device)   # warm-up (allocator, kernels)
    with_fit(x, y, 20, args.batch_size, device)
    t_hand, t_fit = [], []
    for _ in range(args.repeats):
        t_hand.append(hand_written(x, y, args.steps, args.batch_size, device))
        t_fit.append(with_fit(x, y, args.steps, args.batch_size, device))
    images = args.steps * args.batch_size
    hand_ips, fit_ips = images / min(t_hand), images / min(t_fit)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.steps} updates x batch {args.batch_size}, "
          f"best of {args.repeats}")
    print(f"hand-written loop: {hand_ips:10.0f} images/s")
    print(f"train.fit:         {fit_ips:10.0f} images/s")
    print(f"ratio fit / hand-written: {fit_ips / hand_ips:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
