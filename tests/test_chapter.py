import numpy as np
import pytest

from replibook import Chapter, Greater, M, Within
from replibook.chapter import resolve_preset
from replibook.errors import ReplibookError, UnknownName

PRESETS = {"smoke": {"seeds": 1, "steps": 10}, "small": {"seeds": 3, "steps": 100},
           "full": {"seeds": [10, 11, 12], "steps": 1000}}
PAPER = {"title": "Demo", "arxiv": "0000.00000", "venue": "Nowhere", "code": None, "authors": "A. B."}


def chapter(size="small", **over):
    return Chapter("demo", size=size, presets=PRESETS, paper=PAPER, fidelity="reduced-scale",
                   overrides=over, device="cpu")


def test_presets_and_overrides():
    assert resolve_preset(PRESETS, "small", {"steps": 5, "seeds": None}) == {"seeds": 3, "steps": 5}
    with pytest.raises(UnknownName, match="stepz"):
        resolve_preset(PRESETS, "small", {"stepz": 5})
    with pytest.raises(UnknownName, match="huge"):
        chapter("huge")
    ch = chapter("full")
    assert ch.seeds == [10, 11, 12] and ch.cfg.steps == 1000


def test_small_needs_three_seeds():
    with pytest.raises(ReplibookError, match="3 seeds"):
        chapter("small", seeds=2)


def test_claims_are_preregistered_and_verdicts_computed():
    ch = chapter()
    ch.claim("C1", "ln beats bn", evidence="Fig. 6", predicate=Greater(M("acc", "ln"), M("acc", "bn")))
    ch.claim("C2", "ln flat", evidence="Fig. 6", predicate=Within(M("acc", "ln"), M("acc", "bn"), 0.01, 0.05))
    for seed, (a, b) in zip(ch.seeds, [(0.95, 0.80), (0.96, 0.81), (0.97, 0.79)]):
        ch.log("ln", "-", seed, acc=a)
        ch.log("bn", "-", seed, acc=b)
    with pytest.raises(ReplibookError, match="before the experiment"):
        ch.claim("C3", "late", evidence="-", predicate=Greater(M("acc", "ln"), M("acc", "bn")))
    v = ch.verdicts()
    assert list(v["verdict"]) == ["reproduced", "not reproduced"]
    assert v.loc["C1", "ours"].startswith("0.960 ±")
    np.testing.assert_allclose(ch.values(M("acc", "bn")), [0.80, 0.81, 0.79])
    table = ch.summary()
    assert table.loc[("ln", "-"), "acc"].startswith("0.96 ±") and table.loc[("ln", "-"), "seeds"] == 3


def test_smoke_records_not_assessed_and_validates():
    ch = chapter("smoke")
    ch.claim("C1", "ln beats bn", evidence="Fig. 6", predicate=Greater(M("acc", "ln"), M("acc", "bn")))
    ch.log("ln", "-", 0, acc=1.0)
    ch.log("bn", "-", 0, acc=0.0)
    rec = ch.finish()
    assert rec["claims"][0]["verdict"] == "not assessed"
    assert rec["metrics"]["acc/ln/-"]["values"] == [1.0]


def test_finish_writes_only_under_the_runner(tmp_path, monkeypatch):
    ch = chapter("smoke")
    ch.log("ln", "-", 0, acc=1.0)
    monkeypatch.delenv("REPLIBOOK_RUN_DIR", raising=False)
    ch.finish()
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("REPLIBOOK_RUN_DIR", str(tmp_path))
    ch.finish()
    assert (tmp_path / "ledger.json").exists()


def test_log_rejects_duplicates_and_foreign_seeds():
    ch = chapter()
    ch.log("ln", "-", 0, acc=1.0)
    with pytest.raises(ReplibookError, match="twice"):
        ch.log("ln", "-", 0, acc=1.0)
    with pytest.raises(ReplibookError, match="seed 7"):
        ch.log("ln", "-", 7, acc=1.0)
    with pytest.raises(ReplibookError, match="never logged"):
        ch.values(M("loss", "ln"))


def test_track_prints_one_line_under_the_runner(monkeypatch, capsys):
    from replibook.progress import track
    monkeypatch.setenv("REPLIBOOK_RUN_DIR", "/nonexistent")
    assert list(track(range(3), desc="runs")) == [0, 1, 2]
    out = capsys.readouterr().out
    assert out.startswith("runs: 3 done in ") and out.count("\n") == 1
    monkeypatch.delenv("REPLIBOOK_RUN_DIR")
    assert list(track(iter([1, 2]), desc="runs", total=2)) == [1, 2]
