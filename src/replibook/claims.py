"""Claims and the rules that turn measured numbers into verdicts.

A *claim* is a sentence from the paper plus the paper's evidence (a number and
its table/figure, or a qualitative figure) plus a *predicate*: a rule over the
chapter's measured metrics, fixed before the experiment runs.

Verdict rules (BOOK_DESIGN.md, "Claims and verdicts"):

- ``reproduced``      the predicted direction holds and the effect exceeds the
                      seed-to-seed noise: difference > ``k`` standard errors
                      (``k = 2`` by default);
- ``not reproduced``  the opposite direction beyond the same margin, or a stated
                      threshold clearly missed;
- ``inconclusive``    anything else;
- ``not assessed``    smoke runs (one seed, a few updates: no evidence either way).

The standard error of a difference of two means over seeds is the Welch form
``sqrt(s_a^2/n_a + s_b^2/n_b)`` with ``ddof=1`` standard deviations. It ignores
the pairing of arms by seed, which makes it conservative: a verdict that passes
it would also pass a paired test.

Predicates refer to metrics with `M(metric, method, setting)`; a `Chapter`
resolves them to per-seed arrays. Every predicate also `describe()`s itself in
words, which the ledger stores next to the verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .serialize import to_jsonable

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_ASSESSED = "not assessed"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_ASSESSED)

__all__ = [
    "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_ASSESSED", "VERDICTS",
    "M", "Outcome", "Predicate", "Greater", "Less", "Within", "AtLeast", "AtMost", "AllOf", "NotWorse",
    "NotBelow", "OnlySupports", "AnyOf", "FewerTotal", "IntervalAbove",
    "Check", "Claim", "standard_error_of_difference", "compare_means",
]


@dataclass(frozen=True)
class M:
    """A reference to a measured metric: ``metric`` of ``method`` under ``setting``."""

    metric: str
    method: str
    setting: str = "-"

    def key(self) -> str:
        return f"{self.metric}/{self.method}/{self.setting}"

    def __str__(self) -> str:
        return self.key()


Resolver = Callable[[M], np.ndarray]


@dataclass
class Outcome:
    """A verdict plus the numbers it was computed from."""

    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)


def _values(x: np.ndarray | Sequence[float]) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("a claim needs at least one measured value per arm")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"non-finite measured values: {arr}")
    return arr


def _std(arr: np.ndarray) -> float:
    return float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def standard_error_of_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """Welch standard error of ``mean(a) - mean(b)``; 0 when both arms have one value."""
    a, b = _values(a), _values(b)
    return math.sqrt(_std(a) ** 2 / a.size + _std(b) ** 2 / b.size)


def compare_means(a: Sequence[float], b: Sequence[float], *, expect: str = "greater",
                  k: float = 2.0, margin: float = 0.0) -> Outcome:
    """Verdict for "``mean(a)`` is greater (or less) than ``mean(b)``".

    ``margin`` is a minimum effect the claim asks for (in the metric's units), on top
    of the noise rule. With a single value per arm the noise cannot be estimated
    and the verdict is ``inconclusive`` whatever the difference.
    """
    if expect not in ("greater", "less"):
        raise ValueError("expect must be 'greater' or 'less'")
    a, b = _values(a), _values(b)
    diff = float(a.mean() - b.mean())
    se = standard_error_of_difference(a, b)
    signed = diff if expect == "greater" else -diff
    numbers = {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff, "se": se,
               "k": k, "margin": margin, "n_a": int(a.size), "n_b": int(b.size)}
    if a.size < 2 or b.size < 2:
        return Outcome(INCONCLUSIVE, numbers)
    if signed > margin + k * se and signed > 0:
        return Outcome(REPRODUCED, numbers)
    if signed < -k * se and signed < 0:
        return Outcome(NOT_REPRODUCED, numbers)
    return Outcome(INCONCLUSIVE, numbers)


class Predicate:
    """A rule over measured metrics that yields an `Outcome`."""

    def evaluate(self, resolve: Resolver) -> Outcome:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def refs(self) -> list[M]:
        return []


@dataclass
class Greater(Predicate):
    """``mean(a) > mean(b)`` by more than ``k`` standard errors (and ``margin``)."""

    a: M
    b: M
    k: float = 2.0
    margin: float = 0.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        return compare_means(resolve(self.a), resolve(self.b), expect="greater", k=self.k, margin=self.margin)

    def describe(self) -> str:
        extra = f" + {self.margin:g}" if self.margin else ""
        return f"mean({self.a}) - mean({self.b}) > {self.k:g} SE{extra}"

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class Less(Predicate):
    """``mean(a) < mean(b)`` by more than ``k`` standard errors (and ``margin``)."""

    a: M
    b: M
    k: float = 2.0
    margin: float = 0.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        return compare_means(resolve(self.a), resolve(self.b), expect="less", k=self.k, margin=self.margin)

    def describe(self) -> str:
        extra = f" + {self.margin:g}" if self.margin else ""
        return f"mean({self.b}) - mean({self.a}) > {self.k:g} SE{extra}"

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class Within(Predicate):
    """``|mean(a) - mean(b)| <= tol`` -> reproduced; ``> fail_above`` -> not reproduced.

    For claims of *no* effect ("LN is insensitive to batch size"). The thresholds
    are stated in the metric's units and fixed before the run.
    """

    a: M
    b: M
    tol: float
    fail_above: float

    def __post_init__(self) -> None:
        if not self.fail_above >= self.tol >= 0:
            raise ValueError("need 0 <= tol <= fail_above")

    def evaluate(self, resolve: Resolver) -> Outcome:
        a, b = _values(resolve(self.a)), _values(resolve(self.b))
        diff = float(a.mean() - b.mean())
        numbers = {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff,
                   "se": standard_error_of_difference(a, b), "tol": self.tol, "fail_above": self.fail_above}
        if abs(diff) <= self.tol:
            return Outcome(REPRODUCED, numbers)
        if abs(diff) > self.fail_above:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return (f"|mean({self.a}) - mean({self.b})| <= {self.tol:g} (reproduced), "
                f"> {self.fail_above:g} (not reproduced)")

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class AtLeast(Predicate):
    """``mean(a) >= threshold`` beyond noise: reproduced if ``mean - k*SE >= threshold``,
    not reproduced if ``mean + k*SE < threshold``."""

    a: M
    threshold: float
    k: float = 2.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        a = _values(resolve(self.a))
        mean, se = float(a.mean()), _std(a) / math.sqrt(a.size)
        numbers = {"mean_a": mean, "se": se, "threshold": self.threshold, "k": self.k, "n_a": int(a.size)}
        if a.size < 2:
            return Outcome(INCONCLUSIVE, numbers)
        if mean - self.k * se >= self.threshold:
            return Outcome(REPRODUCED, numbers)
        if mean + self.k * se < self.threshold:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"mean({self.a}) >= {self.threshold:g} beyond {self.k:g} SE"

    def refs(self) -> list[M]:
        return [self.a]


@dataclass
class AtMost(Predicate):
    """``mean(a) <= threshold`` beyond noise (mirror image of `AtLeast`)."""

    a: M
    threshold: float
    k: float = 2.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        a = _values(resolve(self.a))
        mean, se = float(a.mean()), _std(a) / math.sqrt(a.size)
        numbers = {"mean_a": mean, "se": se, "threshold": self.threshold, "k": self.k, "n_a": int(a.size)}
        if a.size < 2:
            return Outcome(INCONCLUSIVE, numbers)
        if mean + self.k * se <= self.threshold:
            return Outcome(REPRODUCED, numbers)
        if mean - self.k * se > self.threshold:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"mean({self.a}) <= {self.threshold:g} beyond {self.k:g} SE"

    def refs(self) -> list[M]:
        return [self.a]


@dataclass
class NotWorse(Predicate):
    """Non-inferiority: ``mean(a) >= mean(b) - delta`` beyond noise.

    Reproduced when ``mean(a) - mean(b) + delta > k SE``; not reproduced when
    ``mean(a) - mean(b) + delta < -k SE`` (a is worse than b by more than ``delta``,
    clearly); otherwise inconclusive.
    """

    a: M
    b: M
    delta: float
    k: float = 2.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        a, b = _values(resolve(self.a)), _values(resolve(self.b))
        diff = float(a.mean() - b.mean())
        se = standard_error_of_difference(a, b)
        numbers = {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff, "se": se,
                   "delta": self.delta, "k": self.k}
        if a.size < 2 or b.size < 2:
            return Outcome(INCONCLUSIVE, numbers)
        if diff + self.delta > self.k * se:
            return Outcome(REPRODUCED, numbers)
        if diff + self.delta < -self.k * se:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"mean({self.a}) - mean({self.b}) + {self.delta:g} > {self.k:g} SE"

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class IntervalAbove(Predicate):
    """A confidence interval computed by the chapter (e.g. a paired bootstrap over test images)
    lies above ``threshold``: reproduced if ``lo > threshold``, not reproduced if
    ``hi < threshold``, inconclusive if the interval contains it.

    For effects measured once on a fixed test set (inference-only checks) rather than over
    training seeds. ``lo`` and ``hi`` name the logged interval ends; with several seeds the
    most pessimistic end decides (the smallest ``lo``, the largest ``hi``).
    """

    lo: M
    hi: M
    threshold: float = 0.0

    def evaluate(self, resolve: Resolver) -> Outcome:
        lo, hi = float(np.min(_values(resolve(self.lo)))), float(np.max(_values(resolve(self.hi))))
        numbers = {"lo": lo, "hi": hi, "threshold": self.threshold}
        if lo > hi:
            raise ValueError(f"interval ends reversed: lo={lo} > hi={hi}")
        if lo > self.threshold:
            return Outcome(REPRODUCED, numbers)
        if hi < self.threshold:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"interval [{self.lo}, {self.hi}] lies above {self.threshold:g}"

    def refs(self) -> list[M]:
        return [self.lo, self.hi]


@dataclass
class Check(Predicate):
    """A deterministic check (an analytic property measured numerically).

    ``below=True``: the measured quantity (e.g. a max absolute deviation) must be
    ``<= tol``; the worst seed decides. Passing -> reproduced; failing by more than
    ``fail_factor`` times -> not reproduced; otherwise inconclusive.
    ``below=False``: the quantity must be ``>= tol`` (a negative control: "this
    transformation does change the output"), mirrored.
    """

    a: M
    tol: float
    fail_factor: float = 10.0
    below: bool = True

    def evaluate(self, resolve: Resolver) -> Outcome:
        a = _values(resolve(self.a))
        worst = float(np.max(a)) if self.below else float(np.min(a))
        numbers = {"worst": worst, "tol": self.tol, "fail_factor": self.fail_factor, "below": self.below}
        passed = worst <= self.tol if self.below else worst >= self.tol
        failed = worst > self.fail_factor * self.tol if self.below else worst < self.tol / self.fail_factor
        if passed:
            return Outcome(REPRODUCED, numbers)
        if failed:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"max({self.a}) <= {self.tol:g}" if self.below else f"min({self.a}) >= {self.tol:g}"

    def refs(self) -> list[M]:
        return [self.a]


@dataclass
class AllOf(Predicate):
    """Conjunction: reproduced if every part is; not reproduced if any part is not."""

    parts: Sequence[Predicate]

    def evaluate(self, resolve: Resolver) -> Outcome:
        outcomes = [p.evaluate(resolve) for p in self.parts]
        verdicts = [o.verdict for o in outcomes]
        if all(v == REPRODUCED for v in verdicts):
            verdict = REPRODUCED
        elif any(v == NOT_REPRODUCED for v in verdicts):
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        return Outcome(verdict, {"parts": [{"verdict": o.verdict, **o.numbers} for o in outcomes]})

    def describe(self) -> str:
        return " AND ".join(f"({p.describe()})" for p in self.parts)

    def refs(self) -> list[M]:
        return [r for p in self.parts for r in p.refs()]


@dataclass
class NotBelow(Predicate):
    """``mean(a) >= mean(b) - tol`` -> reproduced; ``mean(a) < mean(b) - fail_below`` ->
    not reproduced; in between inconclusive (thresholds in the metric's units, fixed
    before the run). For "a is on par with b" claims stated with a tolerance."""

    a: M
    b: M
    tol: float
    fail_below: float

    def __post_init__(self) -> None:
        if not self.fail_below >= self.tol >= 0:
            raise ValueError("need 0 <= tol <= fail_below")

    def evaluate(self, resolve: Resolver) -> Outcome:
        a, b = _values(resolve(self.a)), _values(resolve(self.b))
        diff = float(a.mean() - b.mean())
        numbers = {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff,
                   "tol": self.tol, "fail_below": self.fail_below}
        if diff >= -self.tol:
            return Outcome(REPRODUCED, numbers)
        if diff < -self.fail_below:
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return (f"mean({self.a}) >= mean({self.b}) - {self.tol:g} (reproduced), "
                f"< mean({self.b}) - {self.fail_below:g} (not reproduced)")

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class OnlySupports(Predicate):
    """A condition that can confirm a claim but not refute it: the part's
    ``not reproduced`` becomes ``inconclusive``."""

    part: Predicate

    def evaluate(self, resolve: Resolver) -> Outcome:
        out = self.part.evaluate(resolve)
        verdict = INCONCLUSIVE if out.verdict == NOT_REPRODUCED else out.verdict
        return Outcome(verdict, {**out.numbers, "part_verdict": out.verdict})

    def describe(self) -> str:
        return f"{self.part.describe()} [confirms only]"

    def refs(self) -> list[M]:
        return self.part.refs()


@dataclass
class AnyOf(Predicate):
    """Disjunction: reproduced if any part is; not reproduced if every part is not."""

    parts: Sequence[Predicate]

    def evaluate(self, resolve: Resolver) -> Outcome:
        outcomes = [p.evaluate(resolve) for p in self.parts]
        verdicts = [o.verdict for o in outcomes]
        if any(v == REPRODUCED for v in verdicts):
            verdict = REPRODUCED
        elif all(v == NOT_REPRODUCED for v in verdicts):
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        return Outcome(verdict, {"parts": [{"verdict": o.verdict, **o.numbers} for o in outcomes]})

    def describe(self) -> str:
        return " OR ".join(f"({p.describe()})" for p in self.parts)

    def refs(self) -> list[M]:
        return [r for p in self.parts for r in p.refs()]


@dataclass
class FewerTotal(Predicate):
    """``sum(a) < sum(b)`` over seeds -> reproduced; ``>`` -> not reproduced; equal ->
    inconclusive. For counts of events (e.g. collapsed runs, logged 0/1 per seed)."""

    a: M
    b: M

    def evaluate(self, resolve: Resolver) -> Outcome:
        a, b = _values(resolve(self.a)), _values(resolve(self.b))
        numbers = {"total_a": float(a.sum()), "total_b": float(b.sum())}
        if a.sum() < b.sum():
            return Outcome(REPRODUCED, numbers)
        if a.sum() > b.sum():
            return Outcome(NOT_REPRODUCED, numbers)
        return Outcome(INCONCLUSIVE, numbers)

    def describe(self) -> str:
        return f"sum({self.a}) < sum({self.b})"

    def refs(self) -> list[M]:
        return [self.a, self.b]


@dataclass
class Claim:
    """One claim of the paper, its evidence and the predicate that tests it.

    ``paper_value`` is the paper's own number (copied only from the paper, with
    ``evidence`` naming its table/figure), or None for a qualitative claim.
    ``ours`` names the metric shown next to it in tables (defaults to the first ref).
    """

    id: str
    text: str
    evidence: str
    predicate: Predicate
    paper_value: str | None = None
    ours: M | None = None
    verdict: str = NOT_ASSESSED
    numbers: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, resolve: Resolver, assess: bool = True) -> "Claim":
        if not assess:
            self.verdict, self.numbers = NOT_ASSESSED, {}
            return self
        outcome = self.predicate.evaluate(resolve)
        self.verdict, self.numbers = outcome.verdict, outcome.numbers
        return self

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "text": self.text, "evidence": self.evidence,
            "paper_value": self.paper_value, "predicate": self.predicate.describe(),
            "verdict": self.verdict, "numbers": to_jsonable(self.numbers),
        }
