"""Checks on the repository itself: notebooks, executed chapters, ledger, packaging.

These are the freshness rules of BOOK_DESIGN.md: source notebooks carry no
outputs and default to the smoke size; every executed chapter was produced from
the current source; every chapter is in the book with a small-size record
within budget; the scoreboard page matches the ledger.
"""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from replibook import catalog, ledger, notebooks, scoreboard
from replibook.claims import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = catalog.chapters(ROOT)
SLUGS = [c.slug for c in CHAPTERS]


def test_there_are_chapters():
    assert SLUGS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("entry", CHAPTERS, ids=SLUGS)
def test_source_notebook_has_no_outputs(entry):
    nb = notebooks.load(entry.source)
    dirty = notebooks.code_cells_with_outputs(nb)
    assert not dirty, f"{entry.source}: cells {dirty} carry outputs or execution counts; clear them"


@pytest.mark.parametrize("entry", CHAPTERS, ids=SLUGS)
def test_parameters_cell_defaults_to_smoke(entry):
    nb = notebooks.load(entry.source)
    assert notebooks.parameters_cell(nb) is not None, f"{entry.source}: no cell tagged 'parameters'"
    assert notebooks.parameters(nb).get("size") == "smoke", f"{entry.source}: parameters must set size = \"smoke\""


@pytest.mark.parametrize("entry", CHAPTERS, ids=SLUGS)
def test_executed_chapter_is_fresh(entry):
    assert entry.executed.exists(), f"{entry.executed} missing: run `replibook run {entry.slug} --size small`"
    stamp = notebooks.stamped(entry.executed)
    assert stamp.get("source_hash") == notebooks.source_hash(entry.source), (
        f"{entry.executed} is stale: its source notebook changed; run `replibook run {entry.slug} --size small`")
    assert stamp.get("size") in ("small", "full")


@pytest.mark.parametrize("entry", CHAPTERS, ids=SLUGS)
def test_small_ledger_record_is_valid_fresh_and_within_budget(entry):
    path = ledger.path_for(ROOT / "results", entry.slug, "small")
    rec = ledger.read(path)
    assert rec["source_hash"] == notebooks.source_hash(entry.source), f"{path} predates the notebook"
    assert len(rec["seeds"]) >= 3
    assert rec["wall_s"] <= 300, f"{entry.slug}: small run took {rec['wall_s']:.0f} s (cap 300 s)"
    assert rec["claims"], f"{entry.slug}: no claims recorded"
    for c in rec["claims"]:
        assert c["verdict"] in VERDICTS[:3], f"{entry.slug} {c['id']}: verdict {c['verdict']!r}"


@pytest.mark.parametrize("entry", CHAPTERS, ids=SLUGS)
def test_chapter_is_in_the_table_of_contents(entry):
    assert entry.part, f"{entry.slug} is not listed in _toc.yml under a part"


def test_toc_lists_only_existing_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {f}"


def test_scoreboard_matches_the_ledger():
    committed = (ROOT / "book" / "scoreboard.md").read_text()
    assert committed == scoreboard.render(ROOT), "book/scoreboard.md is stale: run `replibook book`"


def test_methods_modules_exist_for_chapters():
    for slug in SLUGS:
        module = ROOT / "src" / "replibook" / "methods" / f"{slug.replace('-', '_')}.py"
        assert module.exists(), f"{slug}: paper-specific code belongs in {module.relative_to(ROOT)}"


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r.strip(), maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip = [p for p in pip if not p.startswith("-e")]
    assert _names(pip) == _names(wanted), "environment.yml and pyproject.toml list different packages or pins"


def test_torch_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
