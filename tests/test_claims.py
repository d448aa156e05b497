"""Known-answer tests of the verdict rules (BOOK_DESIGN.md, "Claims and verdicts")."""
import math

import numpy as np
import pytest

from replibook.claims import (INCONCLUSIVE, NOT_ASSESSED, NOT_REPRODUCED, REPRODUCED, AllOf, AtLeast,
                              AnyOf, AtMost, Check, Claim, FewerTotal, Greater, Less, M, NotBelow, NotWorse,
                              OnlySupports, Within, compare_means,
                              standard_error_of_difference)

A, B = M("acc", "ln", "bs4"), M("acc", "bn", "bs4")


def resolver(a, b):
    table = {A: np.asarray(a, float), B: np.asarray(b, float)}
    return lambda ref: table[ref]


def test_standard_error_matches_welch_formula():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    expected = math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 4)
    assert standard_error_of_difference(a, b) == pytest.approx(expected)


def test_clear_win_is_reproduced():
    out = Greater(A, B).evaluate(resolver([0.95, 0.96, 0.97], [0.80, 0.81, 0.82]))
    assert out.verdict == REPRODUCED
    assert out.numbers["diff"] == pytest.approx(0.15)


def test_clear_loss_is_not_reproduced():
    assert Greater(A, B).evaluate(resolver([0.80, 0.81, 0.82], [0.95, 0.96, 0.97])).verdict == NOT_REPRODUCED


def test_difference_inside_noise_is_inconclusive():
    # diff = 0.01, SE ~ 0.058: well inside two standard errors
    out = Greater(A, B).evaluate(resolver([0.8, 0.9, 1.0], [0.79, 0.89, 0.99]))
    assert out.verdict == INCONCLUSIVE


def test_boundary_exactly_two_se_is_not_enough():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([0.0, 0.0, 0.0])
    se = standard_error_of_difference(a, b)  # = 1/sqrt(3)
    shift = 2.0 - 2 * se                     # makes mean(a') - mean(b) == 2 SE exactly
    out = compare_means(a - shift, b, expect="greater")
    assert out.numbers["diff"] == pytest.approx(2 * se)
    assert out.verdict == INCONCLUSIVE
    assert compare_means(a - shift + 1e-6, b, expect="greater").verdict == REPRODUCED


def test_less_mirrors_greater():
    r = resolver([0.80, 0.81, 0.82], [0.95, 0.96, 0.97])
    assert Less(A, B).evaluate(r).verdict == REPRODUCED
    assert Greater(B, A).evaluate(r).verdict == REPRODUCED
    assert Less(A, B).evaluate(r).numbers["se"] == pytest.approx(Greater(B, A).evaluate(r).numbers["se"])


def test_single_seed_is_never_conclusive():
    assert Greater(A, B).evaluate(resolver([1.0], [0.0])).verdict == INCONCLUSIVE


def test_margin_requires_a_minimum_effect():
    r = resolver([0.90, 0.901, 0.902], [0.88, 0.881, 0.882])  # diff 0.02, tiny noise
    assert Greater(A, B).evaluate(r).verdict == REPRODUCED
    assert Greater(A, B, margin=0.05).evaluate(r).verdict == INCONCLUSIVE


def test_within_threshold_rule():
    assert Within(A, B, tol=0.015, fail_above=0.03).evaluate(resolver([0.95] * 3, [0.94] * 3)).verdict == REPRODUCED
    assert Within(A, B, tol=0.015, fail_above=0.03).evaluate(resolver([0.95] * 3, [0.93] * 3)).verdict == INCONCLUSIVE
    assert Within(A, B, tol=0.015, fail_above=0.03).evaluate(resolver([0.95] * 3, [0.90] * 3)).verdict == NOT_REPRODUCED
    with pytest.raises(ValueError):
        Within(A, B, tol=0.05, fail_above=0.01)


def test_threshold_rules():
    r = resolver([0.95, 0.96, 0.97], [0.0, 0.0, 0.0])
    assert AtLeast(A, 0.90).evaluate(r).verdict == REPRODUCED
    assert AtLeast(A, 0.99).evaluate(r).verdict == NOT_REPRODUCED
    assert AtLeast(A, 0.96).evaluate(r).verdict == INCONCLUSIVE
    assert AtMost(A, 0.99).evaluate(r).verdict == REPRODUCED
    assert AtMost(A, 0.90).evaluate(r).verdict == NOT_REPRODUCED


def test_check_uses_the_worst_seed():
    assert Check(A, tol=1e-5).evaluate(resolver([1e-7, 2e-7, 3e-6], [0])).verdict == REPRODUCED
    assert Check(A, tol=1e-5).evaluate(resolver([1e-7, 1e-3, 1e-7], [0])).verdict == NOT_REPRODUCED


def test_all_of_combines():
    win, loss = Greater(A, B), Greater(B, A)
    r = resolver([0.95, 0.96, 0.97], [0.80, 0.81, 0.82])
    assert AllOf([win, win]).evaluate(r).verdict == REPRODUCED
    assert AllOf([win, loss]).evaluate(r).verdict == NOT_REPRODUCED
    flat = resolver([0.8, 0.9, 1.0], [0.79, 0.89, 0.99])
    assert AllOf([win, Greater(A, B)]).evaluate(flat).verdict == INCONCLUSIVE


def test_smoke_claim_is_not_assessed_and_record_is_jsonable():
    c = Claim("C1", "LN beats BN at batch 4", evidence="Fig. 6", predicate=Greater(A, B))
    c.evaluate(resolver([0.95, 0.96, 0.97], [0.8, 0.81, 0.82]), assess=False)
    assert c.verdict == NOT_ASSESSED
    c.evaluate(resolver([0.95, 0.96, 0.97], [0.8, 0.81, 0.82]))
    rec = c.record()
    assert rec["verdict"] == REPRODUCED and "2 SE" in rec["predicate"]
    import json
    json.dumps(rec)


def test_non_finite_values_are_rejected():
    with pytest.raises(ValueError):
        Greater(A, B).evaluate(resolver([np.nan, 1.0, 1.0], [0.0, 0.0, 0.0]))


def test_check_above_is_a_negative_control():
    assert Check(A, tol=1e-2, below=False).evaluate(resolver([0.5, 0.2, 0.3], [0])).verdict == REPRODUCED
    assert Check(A, tol=1e-2, below=False).evaluate(resolver([0.5, 1e-6, 0.3], [0])).verdict == NOT_REPRODUCED
    assert Check(A, tol=1e-2, below=False).evaluate(resolver([0.5, 5e-3, 0.3], [0])).verdict == INCONCLUSIVE


def test_not_worse_non_inferiority():
    # a is 0.5 pt worse than b, with tiny noise: not worse by more than 1 pt -> reproduced
    r = resolver([0.895, 0.896, 0.894], [0.900, 0.901, 0.899])
    assert NotWorse(A, B, delta=0.01).evaluate(r).verdict == REPRODUCED
    # 3 pt worse with tiny noise -> not reproduced
    r = resolver([0.870, 0.871, 0.869], [0.900, 0.901, 0.899])
    assert NotWorse(A, B, delta=0.01).evaluate(r).verdict == NOT_REPRODUCED
    # noisy: inconclusive
    r = resolver([0.80, 0.90, 1.00], [0.90, 0.91, 0.89])
    assert NotWorse(A, B, delta=0.01).evaluate(r).verdict == INCONCLUSIVE


def _resolver(values):
    return lambda ref: np.asarray(values[ref.key()], dtype=float)


def test_not_below_and_only_supports_and_any_of():
    a, b, c = M("acc", "UN"), M("acc", "LN"), M("acc", "BN")
    vals = {a.key(): [0.90, 0.91, 0.92], b.key(): [0.915, 0.915, 0.915], c.key(): [0.8, 0.81, 0.79]}
    res = _resolver(vals)
    assert NotBelow(a, b, tol=0.01, fail_below=0.03).evaluate(res).verdict == REPRODUCED
    assert NotBelow(a, b, tol=0.001, fail_below=0.03).evaluate(res).verdict == INCONCLUSIVE
    vals[a.key()] = [0.85, 0.86, 0.87]
    assert NotBelow(a, b, tol=0.01, fail_below=0.03).evaluate(res).verdict == NOT_REPRODUCED
    with pytest.raises(ValueError):
        NotBelow(a, b, tol=0.05, fail_below=0.01)
    # BN clearly better than UN: the supporting condition cannot refute
    assert Greater(c, a).evaluate(res).verdict == NOT_REPRODUCED
    assert OnlySupports(Greater(a, c)).evaluate(res).verdict == REPRODUCED
    assert OnlySupports(Greater(c, b)).evaluate(res).verdict == INCONCLUSIVE
    either = AnyOf([Greater(c, b), Greater(a, c)])
    assert either.evaluate(res).verdict == REPRODUCED
    assert AnyOf([Greater(c, b), Greater(c, a)]).evaluate(res).verdict == NOT_REPRODUCED
    assert " OR " in either.describe() and len(either.refs()) == 4


def test_fewer_total():
    a, b = M("collapsed", "UN"), M("collapsed", "UN-no-filter")
    assert FewerTotal(a, b).evaluate(_resolver({a.key(): [0, 0, 0], b.key(): [0, 1, 0]})
                                       ).verdict == REPRODUCED
    assert FewerTotal(a, b).evaluate(_resolver({a.key(): [0, 0, 0], b.key(): [0, 0, 0]})
                                       ).verdict == INCONCLUSIVE
    assert FewerTotal(a, b).evaluate(_resolver({a.key(): [1, 0, 0], b.key(): [0, 0, 0]})
                                       ).verdict == NOT_REPRODUCED


def test_interval_above_reads_the_logged_interval_ends():
    from replibook.claims import IntervalAbove
    lo, hi = M("gain_lo", "ens"), M("gain_hi", "ens")
    rule = IntervalAbove(lo, hi, threshold=0.0)
    assert rule.evaluate(_resolver({lo.key(): [0.01], hi.key(): [0.05]})).verdict == REPRODUCED
    assert rule.evaluate(_resolver({lo.key(): [-0.01], hi.key(): [0.05]})).verdict == INCONCLUSIVE
    assert rule.evaluate(_resolver({lo.key(): [-0.05], hi.key(): [-0.01]})).verdict == NOT_REPRODUCED
    # several seeds: the most pessimistic ends decide
    assert rule.evaluate(_resolver({lo.key(): [0.02, -0.01], hi.key(): [0.05, 0.06]})).verdict == INCONCLUSIVE
    with pytest.raises(ValueError):
        rule.evaluate(_resolver({lo.key(): [0.05], hi.key(): [0.01]}))
    assert "above 0" in rule.describe()
