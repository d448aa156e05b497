"""Ledger schema validation, atomic writes and clear errors on broken records."""
import json

import pytest

from replibook import ledger
from replibook.errors import LedgerInvalid


def make_record(**over):
    rec = {
        "schema": 1, "chapter": "demo",
        "paper": {"title": "T", "arxiv": "0000.00000", "venue": "V", "code": None, "authors": "A"},
        "size": "small", "params": {"seeds": 3}, "seeds": [0, 1, 2],
        "metrics": {"acc/ln/bs4": {"values": [0.9, 0.91, 0.92], "seeds": [0, 1, 2], "mean": 0.91, "std": 0.01}},
        "claims": [{"id": "C1", "text": "t", "evidence": "Fig. 1", "predicate": "p", "verdict": "reproduced",
                    "numbers": {}, "paper_value": None}],
        "fidelity": "reduced-scale", "deviations": [], "data_sources": [], "zoo": [], "wall_s": 12.5,
        "environment": {"python": "3.11", "torch": "2", "device": "cpu", "threads": 2, "git_sha": None,
                        "git_dirty": None},
        "source_hash": "abc", "timestamp": "2026-01-01T00:00:00+00:00",
    }
    rec.update(over)
    return rec


def test_valid_record_round_trips(tmp_path):
    path = ledger.path_for(tmp_path, "demo", "small")
    ledger.write(path, make_record())
    assert ledger.read(path) == make_record()
    assert ledger.read_all(tmp_path) == {"demo": {"small": make_record()}}


@pytest.mark.parametrize("change, message", [
    ({"size": "huge"}, "size"),
    ({"fidelity": "vibes"}, "fidelity"),
    ({"seeds": []}, "seeds"),
    ({"wall_s": "fast"}, "wall_s"),
    ({"claims": [{"id": "C1", "text": "t", "evidence": "e", "predicate": "p", "verdict": "probably",
                  "numbers": {}}]}, "verdict"),
    ({"metrics": {"m": {"values": [1.0], "seeds": [0, 1], "mean": 1.0, "std": 0.0}}}, "values"),
    ({"schema": 99}, "schema"),
])
def test_invalid_records_are_rejected_with_the_field_named(change, message):
    with pytest.raises(LedgerInvalid, match=message):
        ledger.validate(make_record(**change))


def test_missing_field_is_named():
    rec = make_record()
    del rec["environment"]
    with pytest.raises(LedgerInvalid, match="environment"):
        ledger.validate(rec)


def test_smoke_record_must_not_carry_verdicts():
    with pytest.raises(LedgerInvalid, match="not assessed"):
        ledger.validate(make_record(size="smoke"))


def test_broken_json_names_the_file(tmp_path):
    path = tmp_path / "demo" / "small.json"
    path.parent.mkdir()
    path.write_text("{ not json")
    with pytest.raises(LedgerInvalid, match=str(path)):
        ledger.read(path)


def test_write_refuses_invalid_record_and_keeps_the_old_file(tmp_path):
    path = ledger.path_for(tmp_path, "demo", "small")
    ledger.write(path, make_record())
    with pytest.raises(LedgerInvalid):
        ledger.write(path, make_record(size="huge"))
    assert json.loads(path.read_text())["size"] == "small"
    assert [p.name for p in path.parent.iterdir()] == ["small.json"]  # no temp file left


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    path.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ledger.os, "replace", boom)
    with pytest.raises(OSError):
        ledger.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_to_jsonable_handles_numpy_torch_and_non_finite():
    import numpy as np
    import torch

    from replibook.serialize import to_jsonable
    out = to_jsonable({"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": (np.int64(3), float("nan")),
                       "d": np.arange(2), 4: None})
    assert out == {"a": 1.5, "b": [1, 2], "c": [3, None], "d": [0, 1], "4": None}
    json.dumps(out)
