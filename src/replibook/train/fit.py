"""`fit`: a fixed-update-budget training loop over tensors held on the device.

Chapters compare methods at an equal number of parameter updates (not epochs),
so the budget is ``steps``. The data are tensors already on the device; each
epoch draws a fresh permutation from a seeded generator, so a run is a pure
function of (model init, data, seed) on CPU. The loop avoids per-step host
syncs: the running loss stays on the device and is read only at eval points,
which keeps `fit` within a few percent of a hand-written loop
(``benchmarks/train_loop.py``).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import runtime

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class History:
    """Curves of one training run: ``step`` plus one list per evaluated metric."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def append(self, step: int, train_loss: float, metrics: Mapping[str, float]) -> None:
        self.steps.append(step)
        self.train_loss.append(train_loss)
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(float(v))

    def last(self, name: str) -> float:
        return self.metrics[name][-1] if name in self.metrics else self.train_loss[-1]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": self.steps, "train_loss": self.train_loss, **self.metrics})


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                   wd_groups: Callable[[str, nn.Parameter], bool] | None = None) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD(momentum 0.9). ``wd_groups(name, p)`` picks the parameters that get decay."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if wd_groups is not None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [{"params": [p for n, p in named if wd_groups(n, p)], "weight_decay": weight_decay},
                  {"params": [p for n, p in named if not wd_groups(n, p)], "weight_decay": 0.0}]
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (adam, adamw, sgd)")


class _Loop:
    """What `fit` and `stream_fit` share: the optimiser, the cosine schedule, AMP (bf16
    autocast on CUDA, a grad scaler for fp16), one update, and the eval points."""

    def __init__(self, model: nn.Module, dev: torch.device, *, steps: int, lr: float,
                 opt: str | torch.optim.Optimizer, weight_decay: float,
                 wd_groups: Callable[[str, nn.Parameter], bool] | None, schedule: str | None,
                 clip: float | None, eval_fn: EvalFn | None):
        if schedule not in (None, "cosine"):
            raise ValueError(f"unknown schedule '{schedule}'")
        self.model, self.dev, self.clip, self.eval_fn = model, dev, clip, eval_fn
        self.optimizer = (opt if isinstance(opt, torch.optim.Optimizer)
                          else make_optimizer(model, opt, lr, weight_decay, wd_groups))
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(steps, 1))
                          if schedule == "cosine" else None)
        use_amp = runtime.amp_enabled(dev)
        self.scaler = (torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
                       if use_amp else None)
        self.history = History()
        self.running = torch.zeros((), device=dev)       # on the device: no host sync per step
        self.count = 0

    def update(self, loss: torch.Tensor) -> None:
        """Backward, clip, step and schedule for one minibatch loss."""
        scaled = self.scaler is not None and self.scaler.is_enabled()
        self.optimizer.zero_grad(set_to_none=True)
        if scaled:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if scaled:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.running += loss.detach().float()
        self.count += 1

    def evaluate(self, step: int) -> bool:
        """Call ``eval_fn`` (eval mode, no grad) and log it with the mean loss since the last point."""
        if self.eval_fn is None:
            return False
        self.model.eval()
        with torch.no_grad(), runtime.autocast(self.dev):
            metrics = dict(self.eval_fn(self.model))
        self.model.train()
        loss = float(self.running) / max(self.count, 1) if self.count else float("nan")
        self.history.append(step, loss, metrics)
        self.running, self.count = torch.zeros((), device=self.dev), 0
        return True

    def due(self, step: int, steps: int, eval_every: int | None) -> bool:
        return self.eval_fn is not None and bool((eval_every and step % eval_every == 0) or step == steps)


def fit(model: nn.Module, data: Sequence[torch.Tensor], *, steps: int, batch_size: int,
        lr: float = 1e-3, opt: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0,
        wd_groups: Callable[[str, nn.Parameter], bool] | None = None,
        loss_fn: LossFn | None = None, clip: float | None = None,
        eval_fn: EvalFn | None = None, eval_every: int | None = None,
        schedule: str | None = None, seed: int = 0, device: torch.device | str | None = None,
        progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` for exactly ``steps`` updates on minibatches of ``data``.

    Args:
        data: tensors with a shared first dimension, e.g. ``(x, y)``; moved to ``device``
            once. ``loss_fn(model, *batch)`` gets one minibatch of each.
        steps: the update budget. Epoch boundaries fall where they fall.
        eval_fn: ``model -> {metric: value}``, called (in eval mode, without grad) at
            step 0, every ``eval_every`` updates and after the last one.
        schedule: None (constant lr) or ``"cosine"`` (cosine decay to 0 over ``steps``).
        clip: max global gradient norm.

    Returns: `History` with the eval curves and the mean train loss since the
    previous eval point.
    """
    dev = torch.device(device) if device is not None else runtime.device()
    model.to(dev)
    tensors = [t.to(dev) for t in data]
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("all data tensors must share their first dimension")
    batch_size = min(batch_size, n)
    loss_fn = loss_fn or cross_entropy_loss
    loop = _Loop(model, dev, steps=steps, lr=lr, opt=opt, weight_decay=weight_decay, wd_groups=wd_groups,
                 schedule=schedule, clip=clip, eval_fn=eval_fn)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    loop.evaluate(0)
    order = torch.randperm(n, generator=gen).to(dev)
    pos = 0
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        if pos + batch_size > n:  # new epoch: a fresh permutation, drop the ragged tail
            order = torch.randperm(n, generator=gen).to(dev)
            pos = 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        batch = [t[idx] for t in tensors]
        with runtime.autocast(dev):
            loss = loss_fn(model, *batch)
        loop.update(loss)
        if loop.due(step, steps, eval_every):
            loop.evaluate(step)
            metrics = loop.history.metrics
            if metrics:
                bar.set_postfix({k: f"{v[-1]:.3g}" for k, v in list(metrics.items())[:2]}, refresh=False)
    bar.close()
    model.eval()
    loop.history.wall_s = time.perf_counter() - t0
    return loop.history


Batches = "Iterable[Any] | Callable[[int], Iterable[Any]]"


def cycle_epochs(batches: Any) -> Iterator[Any]:
    """Endless stream of items from ``batches``: an iterable (re-iterated every epoch) or a
    callable ``epoch -> iterable`` (called with 0, 1, 2, ... so a loader can reseed per epoch)."""
    for epoch in itertools.count():
        it = batches(epoch) if callable(batches) else batches
        empty = True
        for item in it:
            empty = False
            yield item
        if empty:
            raise ValueError("the batch stream yielded nothing in an epoch")


def stream_fit(model: nn.Module, batches: Batches, *, steps: int, lr: float = 1e-3,
               opt: str | torch.optim.Optimizer = "sgd", weight_decay: float = 0.0,
               loss_fn: Callable[[nn.Module, Any], torch.Tensor], schedule: str | None = "cosine",
               eval_fn: EvalFn | None = None, eval_every: int | None = None,
               clip: float | None = None, device: torch.device | str | None = None, progress: bool = True,
               desc: str | None = None) -> History:
    """`fit` for data that do not fit in memory: ``steps`` updates on items drawn from ``batches``.

    ``batches`` is an iterable (e.g. a DataLoader; re-iterated when exhausted) or a callable
    ``epoch -> iterable`` (a fresh loader per epoch, so crops and order change with the epoch).
    ``loss_fn(model, item)`` gets each item as the loader yields it (moving it to the device is
    its job). Same optimiser, cosine schedule (per update, to 0), AMP on CUDA (bf16 autocast,
    a grad scaler for fp16), eval points and `History` as `fit`.
    """
    dev = torch.device(device) if device is not None else runtime.device()
    model.to(dev)
    loop = _Loop(model, dev, steps=steps, lr=lr, opt=opt, weight_decay=weight_decay, wd_groups=None,
                 schedule=schedule, clip=clip, eval_fn=eval_fn)
    t0 = time.perf_counter()
    model.train()
    loop.evaluate(0)
    stream = cycle_epochs(batches)
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False, mininterval=2.0)
    for step in bar:
        item = next(stream)
        with runtime.autocast(dev):
            loss = loss_fn(model, item)
        loop.update(loss)
        if loop.due(step, steps, eval_every):
            loop.evaluate(step)
    bar.close()
    model.eval()
    loop.history.wall_s = time.perf_counter() - t0
    return loop.history
