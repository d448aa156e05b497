"""Efficiency metrics: known answers for slopes, FLOP counts, parameter counts, memory and timing."""
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from replibook.metrics import efficiency as E


# --------------------------------------------------------------------------- slopes

@pytest.mark.parametrize("power", [0.5, 1.0, 2.0, 3.0])
def test_loglog_slope_recovers_the_power_of_a_power_law(power):
    n = np.array([64, 256, 1024, 4096, 16384])
    assert E.fit_loglog_slope(n, 3.7 * n ** power) == pytest.approx(power, abs=1e-9)
    slope, intercept = E.fit_loglog(n, 3.7 * n ** power)
    assert intercept == pytest.approx(math.log(3.7), abs=1e-9)


def test_loglog_slope_of_quadratic_plus_constant_approaches_two_only_at_large_n():
    n = np.array([16, 32, 64])
    small = E.fit_loglog_slope(n, n ** 2 + 1e5)
    large = E.fit_loglog_slope(n * 1000, (n * 1000) ** 2 + 1e5)
    assert small < 0.2 and large == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("x,y", [([1], [1]), ([2, 2], [1, 4]), ([1, 2], [0, 4]), ([1, -2], [1, 4]),
                                 ([1, 2, 3], [1, 2])])
def test_loglog_fit_rejects_bad_input(x, y):
    with pytest.raises(ValueError):
        E.fit_loglog_slope(x, y)


# --------------------------------------------------------------------------- FLOPs

def test_attention_flops_known_answers():
    n, d, m = 1024, 32, 64
    assert E.attention_flops(n, d, "softmax") == 4 * n * n * d
    assert E.attention_flops(n, d, "softmax", heads=3) == 3 * 4 * n * n * d
    assert E.attention_flops(n, d, "linformer", m=m) == 8 * n * m * d
    assert E.attention_flops(n, d, "performer", m=m) == 8 * n * m * d + 4 * n * m
    assert E.attention_flops(n, d, "linear") == 4 * n * d * d + 4 * n * d
    assert E.attention_flops(n, d, "nystrom", m=m, iters=6) == 6 * n * m * d + 4 * m * m * d + 8 * m ** 3 * 6
    assert E.attention_flops(n, d, "soft", m=m, iters=20) == (6 * n * m * d + 4 * m * m * d
                                                              + 2 * n * d * d + 4 * m ** 3 * 20)


@pytest.mark.parametrize("kind,slope", [("softmax", 2.0), ("nystrom", 1.0), ("soft", 1.0),
                                        ("performer", 1.0), ("linformer", 1.0), ("linear", 1.0)])
def test_attention_flops_scale_quadratically_or_linearly(kind, slope):
    ns = np.array([2 ** 14, 2 ** 16, 2 ** 18])
    flops = [E.attention_flops(int(n), 64, kind, m=64) for n in ns]
    assert E.fit_loglog_slope(ns, flops) == pytest.approx(slope, abs=0.02)


def test_attention_flops_softmax_matmul_count_matches_a_manual_count():
    # Q K^T: n x d times d x n -> n^2 d multiply-adds; A V: n x n times n x d -> n^2 d.
    n, d = 7, 5
    assert E.attention_flops(n, d, "softmax") == 2 * (n * n * d + n * n * d)


def test_attention_flops_bad_input():
    with pytest.raises(ValueError, match="unknown attention kind"):
        E.attention_flops(10, 4, "flash")
    with pytest.raises(ValueError, match="needs m"):
        E.attention_flops(10, 4, "nystrom")
    with pytest.raises(ValueError):
        E.attention_flops(0, 4, "softmax")


# --------------------------------------------------------------------------- params

def test_param_count_against_a_hand_count():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3, bias=False), nn.LayerNorm(3))
    assert E.param_count(model) == (10 * 20 + 20) + 20 * 3 + (3 + 3)


def test_param_count_counts_shared_parameters_once_and_can_skip_frozen():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    assert E.param_count(model) == 20
    lin.bias.requires_grad_(False)
    assert E.param_count(model, trainable_only=True) == 16


# --------------------------------------------------------------------------- memory

def test_peak_memory_of_a_single_allocation_is_its_size():
    assert E.peak_memory(lambda: torch.empty(1000, 250)) == 1000 * 250 * 4
    assert E.peak_memory(lambda: torch.zeros(100, dtype=torch.float64)) == 800


def test_peak_memory_subtracts_freed_intermediates():
    def chain():
        a = torch.ones(1000, 1000)          # 4 MB
        b = a * 2                           # 4 MB, a still alive -> 8 MB
        del a
        c = b + 1                           # 4 MB, b alive -> 8 MB
        del b
        return c.sum()                      # 4 bytes while only c (4 MB) is alive
    assert E.peak_memory(chain) == 8_000_000


def test_peak_memory_ignores_inputs_views_and_in_place_updates():
    x = torch.randn(500, 500)

    def views_and_in_place(t):
        t.mul_(2)                           # in place: no new storage
        v = t.view(-1)[:10]                 # views: no new storage
        return v

    assert E.peak_memory(views_and_in_place, x) == 0


def test_peak_memory_counts_an_n_squared_attention_matrix():
    n, d = 256, 8
    q = torch.randn(n, d)
    peak = E.peak_memory(lambda: (q @ q.T).softmax(-1))
    assert peak == 2 * n * n * 4            # scores and probabilities alive together


def test_peak_memory_counts_tensors_saved_for_backward():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(64, 100)
    size = 64 * 100 * 4

    def forward():
        return (x @ w).sin().sin().sum()    # each sin saves its input for the backward pass

    def forward_no_grad():
        with torch.no_grad():
            return forward()

    # no grad: at most two (64, 100) tensors alive at once; with grad all three stay alive
    assert E.peak_memory(forward_no_grad) == 2 * size
    assert E.peak_memory(forward) == 3 * size + 4


# --------------------------------------------------------------------------- timing

def test_cpu_benchmark_times_a_known_sleep():
    res = E.cpu_benchmark(time.sleep, 0.01, repeats=3, warmup=1)
    assert 0.009 <= res["median_s"] < 0.1
    assert res["repeats_done"] == 3 and len(res["times_s"]) == 3
    assert res["iqr_s"] >= 0 and res["min_s"] <= res["median_s"] <= res["max_s"]
    assert res["threads"] == torch.get_num_threads()


def test_cpu_benchmark_counts_warmup_calls_and_respects_the_budget():
    calls = []
    res = E.cpu_benchmark(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and res["warmup"] == 2
    res = E.cpu_benchmark(time.sleep, 0.02, repeats=50, warmup=0, budget_s=0.05)
    assert 1 <= res["repeats_done"] <= 4


def test_cpu_benchmark_bad_arguments():
    with pytest.raises(ValueError):
        E.cpu_benchmark(lambda: None, repeats=0)
