"""The ledger: one JSON record per chapter run, ``results/<slug>/<size>.json``.

The schema follows BOOK_DESIGN.md ("Ledger record"). Records are validated on
read and on write, and written atomically (temporary file + ``os.replace``), so
an interrupted run never leaves a half-written record behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .claims import VERDICTS
from .errors import LedgerInvalid

SIZES = ("smoke", "small", "full")
# Protocol between `replibook run` and a chapter: where the notebook leaves its
# record, and the hash of the source notebook it was run from.
RUN_DIR_ENV = "REPLIBOOK_RUN_DIR"
SOURCE_HASH_ENV = "REPLIBOOK_SOURCE_HASH"
FIDELITIES = ("faithful", "reduced-scale", "analog")
SCHEMA_VERSION = 1

# field -> (type or tuple of types, required)
_TOP_LEVEL: dict[str, tuple[Any, bool]] = {
    "schema": (int, True),
    "chapter": (str, True),
    "paper": (dict, True),
    "size": (str, True),
    "params": (dict, True),
    "seeds": (list, True),
    "metrics": (dict, True),
    "claims": (list, True),
    "fidelity": (str, True),
    "deviations": (list, True),
    "data_sources": (list, True),
    "zoo": (list, True),
    "wall_s": ((int, float), True),
    "environment": (dict, True),
    "source_hash": (str, True),
    "timestamp": (str, True),
}
_PAPER = {"title": str, "arxiv": str, "venue": str, "code": (str, type(None)), "authors": str}
_CLAIM = {"id": str, "text": str, "evidence": str, "predicate": str, "verdict": str, "numbers": dict}
_METRIC = {"values": list, "seeds": list, "mean": (int, float), "std": (int, float)}
_ENV = ("python", "torch", "device", "threads", "git_sha", "git_dirty")


def _fail(where: str, msg: str) -> None:
    raise LedgerInvalid(f"{where}: {msg}")


def validate(record: Any, where: str = "ledger record") -> dict[str, Any]:
    """Check ``record`` against the schema; return it unchanged or raise `LedgerInvalid`."""
    if not isinstance(record, dict):
        _fail(where, "not a JSON object")
    for key, (typ, required) in _TOP_LEVEL.items():
        if key not in record:
            if required:
                _fail(where, f"missing field '{key}'")
            continue
        if not isinstance(record[key], typ) or isinstance(record[key], bool) and typ in ((int, float), int):
            _fail(where, f"field '{key}' should be {getattr(typ, '__name__', typ)}, got {type(record[key]).__name__}")
    if record["schema"] != SCHEMA_VERSION:
        _fail(where, f"schema version {record['schema']} (this code reads {SCHEMA_VERSION})")
    if record["size"] not in SIZES:
        _fail(where, f"size '{record['size']}' is not one of {SIZES}")
    if record["fidelity"] not in FIDELITIES:
        _fail(where, f"fidelity '{record['fidelity']}' is not one of {FIDELITIES}")
    for key, typ in _PAPER.items():
        if not isinstance(record["paper"].get(key, None), typ):
            _fail(where, f"paper.{key} missing or of the wrong type")
    if not record["seeds"] or not all(isinstance(s, int) for s in record["seeds"]):
        _fail(where, "seeds must be a non-empty list of integers")
    for name, m in record["metrics"].items():
        for key, typ in _METRIC.items():
            if not isinstance(m.get(key), typ):
                _fail(where, f"metrics['{name}'].{key} missing or of the wrong type")
        if len(m["values"]) != len(m["seeds"]):
            _fail(where, f"metrics['{name}'] has {len(m['values'])} values for {len(m['seeds'])} seeds")
    for i, c in enumerate(record["claims"]):
        for key, typ in _CLAIM.items():
            if not isinstance(c.get(key), typ):
                _fail(where, f"claims[{i}].{key} missing or of the wrong type")
        if c["verdict"] not in VERDICTS:
            _fail(where, f"claims[{i}] verdict '{c['verdict']}' is not one of {VERDICTS}")
        if record["size"] == "smoke" and c["verdict"] != "not assessed":
            _fail(where, f"claims[{i}]: a smoke run must record 'not assessed'")
    for key in _ENV:
        if key not in record["environment"]:
            _fail(where, f"environment.{key} missing")
    if record["wall_s"] < 0:
        _fail(where, "wall_s is negative")
    return record


def path_for(results_dir: Path | str, slug: str, size: str) -> Path:
    return Path(results_dir) / slug / f"{size}.json"


def read(path: Path | str) -> dict[str, Any]:
    """Read and validate one record; a broken file raises `LedgerInvalid` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise LedgerInvalid(f"{path}: no such ledger record") from None
    except json.JSONDecodeError as e:
        raise LedgerInvalid(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return validate(record, where=str(path))


def read_all(results_dir: Path | str) -> dict[str, dict[str, dict[str, Any]]]:
    """All records under ``results_dir`` as ``{slug: {size: record}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(results_dir).glob("*/*.json")):
        rec = read(path)
        out.setdefault(path.parent.name, {})[path.stem] = rec
    return out


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=1, sort_keys=False, allow_nan=False) + "\n"


def write(path: Path | str, record: dict[str, Any]) -> Path:
    """Validate ``record`` and write it atomically to ``path``."""
    validate(record, where=str(path))
    atomic_write_text(path, dumps(record))
    return Path(path)
