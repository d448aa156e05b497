"""Execute chapters with papermill and commit their results atomically.

`run_chapter` checks everything it can before spending compute (chapter,
size, parameter names), executes the notebook in a scratch folder in its own
process, and only when the notebook finished *and* left a valid ledger record
does it write ``results/<slug>/<size>.json`` and ``book/chapters/<slug>.ipynb``.
A failure or an interrupt leaves the committed files untouched.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import catalog, ledger, notebooks, runtime
from .ledger import RUN_DIR_ENV, SIZES, SOURCE_HASH_ENV
from .errors import ReplibookError, UnknownName

BUDGET_S = {"smoke": 20.0, "small": 180.0, "full": None}
CAP_S = {"smoke": 20.0, "small": 300.0, "full": None}


@dataclass
class RunResult:
    slug: str
    size: str
    wall_s: float
    record: dict[str, Any]
    executed: Path            # where the executed notebook was written
    ledger_path: Path | None  # None for smoke


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict. Values are Python literals (``ast.literal_eval``, never eval);
    anything that is not a literal is kept as a plain string (``device=cuda``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ReplibookError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ReplibookError(f"--set key '{key}' is not a valid parameter name")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _error_from(nb_path: Path) -> str | None:
    """The first error a papermill-executed notebook recorded: 'cell N: Name: message'."""
    try:
        nb = notebooks.load(nb_path)
    except (ReplibookError, OSError):
        return None
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") != "PapermillExecutionError":
                msg = str(out.get("evalue", "")).strip().splitlines()
                return f"cell {i}: {out.get('ename')}: {msg[0] if msg else ''}"
    return None


def _strip_papermill_noise(nb: Any) -> None:
    """Drop papermill's per-cell timing metadata (it changes on every run and adds nothing)."""
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("papermill", None)


def run_chapter(slug: str, size: str, sets: Mapping[str, Any] | None = None, *,
                repo: Path | str | None = None, quiet: bool = False,
                timeout_s: float | None = None) -> RunResult:
    r = catalog.root(repo)
    entry = catalog.get(slug, r)
    if size not in SIZES:
        raise UnknownName(f"unknown size '{size}' (sizes: {', '.join(SIZES)})")
    sets = dict(sets or {})
    declared = notebooks.parameters(entry.source)
    unknown = sorted(set(sets) - set(declared))
    if unknown:
        raise UnknownName(f"unknown parameter '{unknown[0]}' for chapter '{slug}' "
                          f"(parameters: {', '.join(sorted(declared))})")
    params = {**sets, "size": size}
    source_hash = notebooks.source_hash(entry.source)

    scratch = Path(tempfile.mkdtemp(prefix=f"replibook-{slug}-{size}-"))
    out_nb = scratch / f"{slug}.ipynb"
    env = dict(os.environ, **{RUN_DIR_ENV: str(scratch), SOURCE_HASH_ENV: source_hash,
                              "PYTHONHASHSEED": "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    cmd = [sys.executable, "-m", "papermill", str(entry.source), str(out_nb),
           "-y", json.dumps(params), "--cwd", str(scratch), "-k", "python3", "--no-progress-bar"]
    if not quiet:
        print(f"running {slug} [{size}] ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            detail = _error_from(out_nb)
            if detail is None:
                tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
                detail = tail[-1] if tail else f"papermill exited with {proc.returncode}"
            raise ReplibookError(f"chapter '{slug}' [{size}] failed at {detail}")
        record_path = scratch / "ledger.json"
        if not record_path.exists():
            raise ReplibookError(f"chapter '{slug}' [{size}] ran but left no ledger record (it must call ch.finish())")
        record = ledger.read(record_path)
        nb = notebooks.load(out_nb)
        # wall_s is the notebook's execution time, kernel start to last cell, as papermill
        # measures it; the launcher's own start-up (importing papermill) is not the chapter's.
        duration = nb.get("metadata", {}).get("papermill", {}).get("duration")
        record["wall_s"] = round(float(duration) if duration else wall, 2)
        record["source_hash"] = source_hash
        _strip_papermill_noise(nb)
        notebooks.stamp(nb, slug=slug, size=size, source_hash=source_hash, params=record["params"],
                        wall_s=record["wall_s"], timestamp=record["timestamp"])
        nb_text = notebooks.dumps(nb)
        if size == "smoke":
            dest_dir = runtime.cache_dir("smoke")
            executed = dest_dir / f"{slug}.ipynb"
            ledger.atomic_write_text(executed, nb_text)
            ledger.atomic_write_text(dest_dir / f"{slug}.json", ledger.dumps(record))
            ledger_path = None
        else:
            ledger_path = ledger.path_for(r / "results", slug, size)
            ledger.validate(record, where=str(ledger_path))
            executed = entry.executed
            ledger.atomic_write_text(executed, nb_text)
            ledger.write(ledger_path, record)
    except subprocess.TimeoutExpired:
        raise ReplibookError(f"chapter '{slug}' [{size}] exceeded the {timeout_s:.0f} s timeout") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not quiet:
        counts: dict[str, int] = {}
        for c in record["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
        budget = BUDGET_S.get(size)
        took = record["wall_s"]
        over = f" (over the {budget:.0f} s budget)" if budget and took > budget else ""
        print(f"{slug} [{size}] executed in {took:.1f} s{over} ({wall:.1f} s with launcher); "
              f"verdicts {counts}; wrote {executed}", file=sys.stderr, flush=True)
    return RunResult(slug, size, wall, record, executed, ledger_path)


@dataclass
class ChapterStatus:
    slug: str
    part: str | None
    sizes: dict[str, float]           # size -> wall_s on record
    verdicts: dict[str, int]          # of the small (or full) record
    stale: list[str]                  # reasons; empty when fresh
    over_budget: list[str]


def status(repo: Path | str | None = None) -> list[ChapterStatus]:
    r = catalog.root(repo)
    out = []
    for e in catalog.chapters(r):
        current = notebooks.source_hash(e.source)
        sizes, verdicts, stale, over = {}, {}, [], []
        for size in ("small", "full"):
            path = ledger.path_for(r / "results", e.slug, size)
            if not path.exists():
                continue
            rec = ledger.read(path)
            sizes[size] = rec["wall_s"]
            if rec["source_hash"] != current:
                stale.append(f"{size} ledger predates the notebook")
            cap = CAP_S.get(size)
            if cap and rec["wall_s"] > cap:
                over.append(f"{size} {rec['wall_s']:.0f} s > {cap:.0f} s cap")
            if size == "small" or not verdicts:
                verdicts = {}
                for c in rec["claims"]:
                    verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
        if not e.executed.exists():
            stale.append("no executed chapter")
        elif notebooks.stamped(e.executed).get("source_hash") != current:
            stale.append("executed chapter predates the notebook")
        if "small" not in sizes:
            stale.append("no small ledger record")
        out.append(ChapterStatus(e.slug, e.part, sizes, verdicts, stale, over))
    return out
