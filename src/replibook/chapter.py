"""`Chapter`: the session object every notebook of the book runs through.

A chapter notebook does, in order::

    ch = Chapter("layer-norm", size=size, presets=PRESETS, paper=PAPER,
                 fidelity="reduced-scale", overrides=dict(seeds=seeds, ...))
    ch.claim("C1", "...", evidence="Fig. 6", predicate=Greater(M(...), M(...)))  # pre-registered
    ...                                   # experiment: ch.log(method, setting, seed, acc=...)
    ch.results()                          # mean ± std over seeds, paper vs ours
    ch.verdicts()                         # computed, never typed
    ch.finish()                           # ledger record (written by `replibook run`)

Claims must be registered before the first metric is logged: the predicate is
fixed before any number it judges exists.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import claims as _claims
from . import ledger, runtime
from .claims import M, Claim, Predicate
from .errors import ReplibookError, UnknownName
from .serialize import to_jsonable

SIZES = ledger.SIZES
RUN_DIR_ENV = ledger.RUN_DIR_ENV
SOURCE_HASH_ENV = ledger.SOURCE_HASH_ENV

_VERDICT_COLOURS = {
    _claims.REPRODUCED: "#d9f2d9",
    _claims.NOT_REPRODUCED: "#f8d7d7",
    _claims.INCONCLUSIVE: "#fff2cc",
    _claims.NOT_ASSESSED: "#e8e8e8",
}


class Config(dict):
    """A preset: a dict whose keys are also attributes (``cfg.updates``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"preset has no knob '{name}' (knobs: {', '.join(self)})") from None


def resolve_preset(presets: Mapping[str, Mapping[str, Any]], size: str,
                   overrides: Mapping[str, Any] | None = None) -> Config:
    """The preset for ``size`` with the non-None ``overrides`` applied.

    An override for a knob the preset does not have is an error, so a typo in
    ``--set`` never silently runs the default.
    """
    if size not in presets:
        raise UnknownName(f"unknown size '{size}': this chapter has {', '.join(presets)}")
    cfg = Config(presets[size])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in cfg:
            raise UnknownName(f"unknown parameter '{key}' for size '{size}' (knobs: {', '.join(sorted(cfg))})")
        cfg[key] = value
    return cfg


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def format_mean_std(values: Iterable[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std"`` over seeds (std with ddof=1); scientific notation for tiny values."""
    arr = np.asarray(list(values), dtype=float) * scale
    mean, std = _mean_std(arr)
    fmt = f".{digits}f"
    if 0 < abs(mean) < 10 ** -digits or (mean == 0 and 0 < std < 10 ** -digits):
        fmt = ".1e"
    return f"{mean:{fmt}} ± {std:{fmt}}" if arr.size > 1 else f"{mean:{fmt}}"


class Chapter:
    """Size preset, seeds, device, metrics, claims and the ledger record of one run."""

    def __init__(self, slug: str, *, size: str, presets: Mapping[str, Mapping[str, Any]],
                 paper: Mapping[str, Any], fidelity: str | Mapping[str, str],
                 overrides: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        self._t0 = time.perf_counter()
        if size not in SIZES:
            raise UnknownName(f"unknown size '{size}' (sizes: {', '.join(SIZES)})")
        self.slug, self.size = slug, size
        self.cfg = resolve_preset(presets, size, overrides)
        if "seeds" not in self.cfg:
            raise ReplibookError("every preset needs a 'seeds' knob (a count or a list of seeds)")
        seeds = self.cfg["seeds"]
        self.seeds: list[int] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
        if size != "smoke" and len(self.seeds) < 3:
            raise ReplibookError(f"size '{size}' needs at least 3 seeds, got {len(self.seeds)}")
        self.paper = dict(paper)
        fid = fidelity[size] if isinstance(fidelity, Mapping) else fidelity
        if fid not in ledger.FIDELITIES:
            raise UnknownName(f"fidelity '{fid}' is not one of {ledger.FIDELITIES}")
        self.fidelity = fid
        self.device = runtime.device(device)
        # $REPLIBOOK_THREADS wins; else a preset may ask for a thread count (chapters made of
        # many tiny ops run faster on one thread than on two that keep synchronising)
        runtime.set_threads(int(os.environ.get("REPLIBOOK_THREADS") or 0) or self.cfg.get("threads"))
        self.claims: list[Claim] = []
        self.deviations: list[str] = []
        self.data_sources: list[dict[str, Any]] = []
        self._rows: list[dict[str, Any]] = []
        self._zoo_seen: list[dict[str, Any]] = []
        self.record: dict[str, Any] | None = None

    # ------------------------------------------------------------------ claims
    @property
    def assess(self) -> bool:
        """Whether this run produces verdicts (every size but smoke)."""
        return self.size != "smoke"

    def claim(self, id: str, text: str, *, evidence: str, predicate: Predicate,
              paper_value: str | None = None, ours: M | None = None) -> Claim:
        """Pre-register a claim. Must come before the first `log`."""
        if self._rows:
            raise ReplibookError(f"claim {id} registered after metrics were logged: "
                                 "register every claim before the experiment runs")
        if any(c.id == id for c in self.claims):
            raise ReplibookError(f"claim id '{id}' used twice")
        c = Claim(id=id, text=text, evidence=evidence, predicate=predicate,
                  paper_value=paper_value, ours=ours)
        self.claims.append(c)
        return c

    # ----------------------------------------------------------------- metrics
    def log(self, method: str, setting: str, seed: int, **metrics: float) -> None:
        """Record scalar metrics of one (method, setting, seed) run."""
        if seed not in self.seeds:
            raise ReplibookError(f"seed {seed} is not one of this run's seeds {self.seeds}")
        for name, value in metrics.items():
            value = float(value)
            if any(r["metric"] == name and r["method"] == method and r["setting"] == setting
                   and r["seed"] == seed for r in self._rows):
                raise ReplibookError(f"{name}/{method}/{setting} seed {seed} logged twice")
            self._rows.append({"method": method, "setting": setting, "seed": seed, "metric": name, "value": value})

    def frame(self) -> pd.DataFrame:
        """Every logged number: columns method, setting, seed, metric, value."""
        return pd.DataFrame(self._rows, columns=["method", "setting", "seed", "metric", "value"])

    def values(self, ref: M | str, method: str | None = None, setting: str = "-") -> np.ndarray:
        """Per-seed values (in seed order) of a metric; raises if it was never logged."""
        if not isinstance(ref, M):
            ref = M(ref, method or "-", setting)
        vals = {r["seed"]: r["value"] for r in self._rows
                if r["metric"] == ref.metric and r["method"] == ref.method and r["setting"] == ref.setting}
        if not vals:
            raise ReplibookError(f"metric {ref} was never logged")
        return np.array([vals[s] for s in self.seeds if s in vals])

    def use_data(self, card: Mapping[str, Any]) -> None:
        """Record a dataset the run read (its `Dataset.card()`), with its source."""
        card = dict(card)
        if card not in self.data_sources:
            self.data_sources.append(card)

    def deviation(self, text: str) -> None:
        """Record a deviation from the paper (shown in the chapter and kept in the ledger)."""
        if text not in self.deviations:
            self.deviations.append(text)

    # ----------------------------------------------------------------- results
    def evaluate(self) -> list[Claim]:
        for c in self.claims:
            c.evaluate(self.values, assess=self.assess)
        return self.claims

    def summary(self, metrics: Iterable[str] | None = None, digits: int = 2, scale: float = 1.0) -> pd.DataFrame:
        """Mean ± std over seeds, one row per (method, setting), one column per metric."""
        df = self.frame()
        if metrics is not None:
            df = df[df.metric.isin(list(metrics))]
        if df.empty:
            return pd.DataFrame()
        table = (df.groupby(["method", "setting", "metric"], sort=False)["value"]
                 .apply(lambda v: format_mean_std(v, digits, scale)).unstack("metric"))
        n = df.groupby(["method", "setting"], sort=False)["seed"].nunique().rename("seeds")
        return table.join(n)

    def _ours(self, c: Claim) -> str:
        ref = c.ours or (c.predicate.refs()[0] if c.predicate.refs() else None)
        if ref is None:
            return ""
        try:
            return format_mean_std(self.values(ref), 3 if abs(self.values(ref).mean()) < 10 else 1)
        except ReplibookError:
            return "(not measured)"

    def verdicts(self) -> pd.DataFrame:
        """One row per claim: the paper's evidence, our number, the rule, the verdict."""
        self.evaluate()
        rows = [{"claim": c.id, "statement": c.text,
                 "paper": f"{c.paper_value} ({c.evidence})" if c.paper_value else c.evidence,
                 "ours": self._ours(c), "rule": c.predicate.describe(), "verdict": c.verdict}
                for c in self.claims]
        return pd.DataFrame(rows).set_index("claim")

    def styled_verdicts(self):
        """`verdicts()` with one colour per verdict, for display in the chapter."""
        return self.verdicts().style.map(
            lambda v: f"background-color: {_VERDICT_COLOURS.get(v, '')}", subset=["verdict"])

    # ------------------------------------------------------------------ ledger
    def zoo_entries(self) -> list[dict[str, Any]]:
        try:
            from . import zoo
            return [dict(e) for e in getattr(zoo, "used", lambda: [])()]
        except ImportError:
            return []

    def _source_hash(self) -> str:
        if os.environ.get(SOURCE_HASH_ENV):
            return os.environ[SOURCE_HASH_ENV]
        from . import notebooks
        path = runtime.repo_root() / "notebooks" / f"{self.slug}.ipynb"
        return notebooks.source_hash(path) if path.exists() else "unknown"

    def _metrics_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (metric, method, setting), group in self.frame().groupby(["metric", "method", "setting"], sort=False):
            group = group.sort_values("seed")
            vals = group["value"].to_numpy()
            mean, std = _mean_std(vals)
            out[f"{metric}/{method}/{setting}"] = {
                "values": [float(v) for v in vals], "seeds": [int(s) for s in group["seed"]],
                "mean": mean, "std": std}
        return out

    def build_record(self) -> dict[str, Any]:
        self.evaluate()
        claims = []
        for c in self.claims:
            rec = c.record()
            rec["ours"] = self._ours(c)
            claims.append(rec)
        paper = {"title": "", "arxiv": "", "venue": "", "code": None, "authors": ""}
        paper.update(self.paper)
        return {
            "schema": ledger.SCHEMA_VERSION,
            "chapter": self.slug,
            "paper": paper,
            "size": self.size,
            "params": to_jsonable(dict(self.cfg)),
            "seeds": self.seeds,
            "metrics": self._metrics_record(),
            "claims": claims,
            "fidelity": self.fidelity,
            "deviations": list(self.deviations),
            "data_sources": to_jsonable(self.data_sources),
            "zoo": self.zoo_entries(),
            "wall_s": round(time.perf_counter() - self._t0, 2),
            "environment": runtime.environment_card(self.device),
            "source_hash": self._source_hash(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def finish(self) -> dict[str, Any]:
        """Evaluate the claims and hand the ledger record to the runner.

        Under `replibook run` the record goes to the runner's scratch folder; the
        runner writes it to ``results/`` only after the whole notebook succeeded.
        Run interactively, nothing is written (so an exploratory run never
        overwrites the book's record) and the record is returned.
        """
        self.record = ledger.validate(self.build_record(), where=f"record of {self.slug}")
        run_dir = os.environ.get(RUN_DIR_ENV)
        if run_dir:
            ledger.atomic_write_text(Path(run_dir) / "ledger.json", ledger.dumps(self.record))
        counts = pd.Series([c.verdict for c in self.claims]).value_counts().to_dict()
        where = "handed to the runner" if run_dir else "not written (interactive run; use `replibook run`)"
        print(f"{self.slug} [{self.size}] {len(self.seeds)} seeds, {self.record['wall_s']:.0f} s; "
              f"verdicts {counts}; ledger record {where}")
        return self.record
