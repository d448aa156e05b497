r"""Cost of a computation: wall time, peak memory, parameter count, attention FLOPs, scaling slopes.

Efficiency chapters (efficient attention, lightweight modules) claim that a
method is faster, leaner or *scales* better. The measurements here are defined
precisely so that a claim can be judged on them:

- `cpu_benchmark` times a call with ``time.perf_counter`` (after warm-up calls,
  median and inter-quartile range over repeats; CUDA work is synchronised);
- `peak_memory` is the high-water mark of the bytes of tensor storage
  *created while the call runs* (see its docstring for what that includes);
- `param_count` counts parameters, `attention_flops` counts the matrix-product
  FLOPs of one attention operator from its formula;
- `fit_loglog_slope` turns a scaling curve into one number: cost
  :math:`\propto n^s` has slope :math:`s` on log-log axes (1 linear, 2 quadratic).

Timings on shared CPUs are noisy: report the median with its IQR, the thread
count (`cpu_benchmark` records it) and fit slopes over a wide range of sizes.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["cpu_benchmark", "peak_memory", "param_count", "attention_flops", "ATTENTION_KINDS",
           "fit_loglog_slope", "fit_loglog"]


# ----------------------------------------------------------------------------- time

def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cpu_benchmark(fn: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1,
                  budget_s: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Wall time of ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Each timed call is measured separately with ``time.perf_counter`` (pending CUDA
    work is synchronised before and after, so the name notwithstanding GPU calls are
    timed correctly). ``budget_s`` stops the repeats early once the timed calls have
    used that many seconds (at least one call is always timed), so a slow setting
    cannot blow a chapter's budget; ``repeats_done`` says how many ran.

    Returns:
        ``{"median_s", "iqr_s", "mean_s", "min_s", "max_s", "times_s", "repeats_done",
        "warmup", "threads"}``; ``iqr_s`` is the 75th minus the 25th percentile
        (0 for a single call).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("cpu_benchmark needs repeats >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn(*args, **kwargs)
    _sync()
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        _sync()
        times.append(time.perf_counter() - t0)
        if budget_s is not None and sum(times) >= budget_s:
            break
    arr = np.asarray(times)
    q25, q75 = np.percentile(arr, [25, 75])
    return {"median_s": float(np.median(arr)), "iqr_s": float(q75 - q25),
            "mean_s": float(arr.mean()), "min_s": float(arr.min()), "max_s": float(arr.max()),
            "times_s": [float(t) for t in arr], "repeats_done": len(times), "warmup": warmup,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- memory

class _StorageTracker(TorchDispatchMode):
    """Counts the bytes of tensor storages that ops create, and their high-water mark.

    A storage is *new* when an op returns a tensor whose storage is not one of that
    op's inputs' storages (views and in-place results alias an input and are not
    counted). A weak reference on each new storage subtracts its bytes when torch
    frees it, so ``live`` follows the allocations and frees of the call.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch otherwise wraps __torch_dispatch__ in dynamo.disable, whose first call imports
        # torch._dynamo (2-3 s); this mode is never used under torch.compile.
        return False

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.count = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_in, _ = tree_flatten((args, kwargs))
        inputs = {t.untyped_storage()._cdata for t in flat_in
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        out = func(*args, **kwargs)
        flat_out, _ = tree_flatten(out)
        for t in flat_out:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._refs:
                continue
            nbytes = storage.nbytes()
            self._refs[key] = weakref.ref(storage, lambda _, k=key, b=nbytes: self._freed(k, b))
            self.live += nbytes
            self.count += 1
            self.peak = max(self.peak, self.live)
        return out


def peak_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Peak bytes of tensor memory allocated while ``fn(*args, **kwargs)`` runs.

    What it measures: the high-water mark, over the call, of the total size of
    the tensor storages created *during* the call and still alive at that moment:
    intermediate results, tensors autograd saves for the backward pass, and the
    returned value. Inputs and parameters that existed before the call are not
    counted; views and in-place updates allocate nothing. Freed storages are
    subtracted when torch releases them, so a chain ``a -> b -> c`` that drops
    ``a`` before computing ``c`` peaks at ``|b| + |c|``, not the sum of all three.

    How: on CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation
    before the call (this includes the caching allocator's rounding). Elsewhere
    a ``TorchDispatchMode`` sees every op's outputs and tracks their storages
    with weak references; this is exact for torch tensors whatever the device,
    but it does not see memory an op uses only *inside* its kernel (a fused
    kernel's workspace) nor NumPy / Python allocations. (``tracemalloc`` is not
    used because torch's CPU allocator bypasses Python's allocator, so it would
    report almost nothing for tensors.)

    The output of ``fn`` is dropped before returning. Returns an int (bytes).
    """
    use_cuda = torch.cuda.is_available() and any(
        isinstance(a, torch.Tensor) and a.is_cuda for a in tree_flatten((args, kwargs))[0])
    if use_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return int(peak)
    tracker = _StorageTracker()
    with tracker:
        out = fn(*args, **kwargs)
    del out
    return int(tracker.peak)


# ------------------------------------------------------------------------ parameters

def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# ------------------------------------------------------------------------ attention FLOPs

ATTENTION_KINDS = ("softmax", "nystrom", "soft", "performer", "linformer", "linear")


def attention_flops(n: int, d: int, kind: str, *, m: int | None = None, heads: int = 1,
                    iters: int | None = None) -> int:
    r"""Matrix-product FLOPs (2 per multiply-add) of one attention operator over ``n`` tokens.

    ``d`` is the head dimension and ``heads`` the number of heads; the Q/K/V/output
    projections (the same for every kind) and element-wise work (softmax, exp,
    normalisation) are not counted. Per head:

    ==========  ==========================================================  =======================
    kind        products counted                                            FLOPs per head
    ==========  ==========================================================  =======================
    softmax     Q K^T and A V                                               4 n^2 d
    nystrom     k(Q, K~), k(Q~, K~), k(Q~, K), then k3 V, pinv (.),          6 n m d + 4 m^2 d
                k1 (.) right to left; Nystromformer's pinv iteration        + 8 m^3 iters
                (4 products of m x m matrices per iteration)
    soft        as nystrom with the Gaussian kernel, plus the landmark      6 n m d + 4 m^2 d
                convolution (kernel = stride, 2 n d^2) and Newton           + 2 n d^2 + 4 m^3 iters
                iterations (2 products per iteration)
    performer   phi(Q), phi(K) (2 n m d each), phi(K)^T V, phi(Q) (.),      8 n m d + 4 n m
                normaliser phi(Q) (phi(K)^T 1)
    linformer   E K, F V (2 m n d each), Q K'^T, A V'                       8 n m d
    linear      phi(K)^T V, phi(Q) (.), normaliser                          4 n d^2 + 4 n d
    ==========  ==========================================================  =======================

    ``m`` is the number of landmarks / random features / projected length
    (required for all kinds but softmax and linear). ``iters`` defaults to 6 for
    nystrom (Nystromformer's setting) and 20 for soft (the SOFT code's setting).
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; known: {', '.join(ATTENTION_KINDS)}")
    if n < 1 or d < 1 or heads < 1:
        raise ValueError("n, d and heads must be positive")
    if kind in ("nystrom", "soft", "performer", "linformer") and (m is None or m < 1):
        raise ValueError(f"attention kind {kind!r} needs m (landmarks / features / "
                         "projected length)")
    if kind == "softmax":
        per_head = 4 * n * n * d
    elif kind in ("nystrom", "soft"):
        # kernel_1 = k(Q, K~) (2nmd), kernel_2 = k(Q~, K~) (2m^2 d), kernel_3 = k(Q~, K) (2mnd);
        # right to left: kernel_3 V (2mnd), pinv (.) (2m^2 d), kernel_1 (.) (2nmd)
        per_head = 6 * n * m * d + 4 * m * m * d
        if kind == "nystrom":
            per_head += 8 * m ** 3 * (6 if iters is None else iters)   # AZ and 3 more products
        else:
            per_head += 2 * n * d * d                                  # landmark conv
            per_head += 4 * m ** 3 * (20 if iters is None else iters)    # V A V: two products
    elif kind == "performer":
        per_head = 8 * n * m * d + 4 * n * m
    elif kind == "linformer":
        per_head = 8 * n * m * d
    else:  # linear
        per_head = 4 * n * d * d + 4 * n * d
    return int(per_head * heads)


# ------------------------------------------------------------------------ scaling

def fit_loglog(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    r"""Least-squares line through :math:`(\log x, \log y)`: returns ``(slope, intercept)``.

    ``y = c x^s`` gives ``slope = s`` and ``intercept = log c`` (natural log).
    Needs at least two distinct positive ``x`` and positive ``y``.
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length ({xa.size} vs {ya.size})")
    if xa.size < 2 or np.unique(xa).size < 2:
        raise ValueError("a log-log fit needs at least two distinct x values")
    finite = np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))
    if np.any(xa <= 0) or np.any(ya <= 0) or not finite:
        raise ValueError("a log-log fit needs finite, positive x and y")
    slope, intercept = np.polyfit(np.log(xa), np.log(ya), 1)
    return float(slope), float(intercept)


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Slope of ``log y`` against ``log x`` (least squares): the exponent ``s`` of ``y ~ x^s``."""
    return fit_loglog(x, y)[0]

