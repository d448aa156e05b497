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

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

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
    optimizer = opt if isinstance(opt, torch.optim.Optimizer) else make_optimizer(model, opt, lr, weight_decay, wd_groups)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                 if schedule == "cosine" else None)
    if schedule not in (None, "cosine"):
        raise ValueError(f"unknown schedule '{schedule}'")
    use_amp = runtime.amp_enabled(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported()) if use_amp else None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history = History()
    t0 = time.perf_counter()

    def evaluate(step: int, running: torch.Tensor, count: int) -> None:
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad(), runtime.autocast(dev):
            metrics = dict(eval_fn(model))
        model.train()
        history.append(step, float(running) / max(count, 1) if count else float("nan"), metrics)

    model.train()
    running = torch.zeros((), device=dev)
    count = 0
    evaluate(0, running, 0)
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
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running += loss.detach().float()
        count += 1
        if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == steps):
            evaluate(step, running, count)
            if history.metrics:
                bar.set_postfix({k: f"{v[-1]:.3g}" for k, v in list(history.metrics.items())[:2]}, refresh=False)
            running = torch.zeros((), device=dev)
            count = 0
    bar.close()
    model.eval()
    history.wall_s = time.perf_counter() - t0
    return history
