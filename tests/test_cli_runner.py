"""The `replibook` CLI end to end, on a throwaway book with one tiny chapter.

Each papermill run starts a kernel (a few seconds), so the runs are few and
shared through a module-scoped fixture.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from replibook import notebooks
from replibook.runner import parse_set

PARAMS = 'size = "smoke"\nseeds = None\nshift = 0.1\nfail = False\n'
BODY = '''
from replibook import Chapter, Greater, M
ch = Chapter("demo", size=size, presets={"smoke": {"seeds": 1, "shift": 0.1}, "small": {"seeds": 3, "shift": 0.1},
             "full": {"seeds": 3, "shift": 0.1}},
             paper={"title": "Demo paper", "arxiv": "0000.00000", "venue": "Test", "code": None, "authors": "A"},
             fidelity="analog", overrides=dict(seeds=seeds, shift=shift), device="cpu")
ch.claim("C1", "a beats b", evidence="Table 1", paper_value="+10 pt", predicate=Greater(M("acc", "a"), M("acc", "b")))
if fail:
    raise RuntimeError("deliberate failure")
for s in ch.seeds:
    ch.log("a", "-", s, acc=0.5 + ch.cfg.shift + 0.01 * s)
    ch.log("b", "-", s, acc=0.5 + 0.01 * s)
ch.finish()
'''


def make_book(root: Path) -> None:
    (root / "notebooks").mkdir(parents=True)
    (root / "book" / "chapters").mkdir(parents=True)
    (root / "results").mkdir()
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Demo"), p, nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "notebooks" / "demo.ipynb"))
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: Demo part\n"
                                   "    chapters:\n      - file: book/chapters/demo\n")


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, REPLIBOOK_ROOT=str(root), REPLIBOOK_CACHE=str(root / "cache"))
    return subprocess.run([sys.executable, "-m", "replibook.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "cache" not in p.parts}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    make_book(root)
    proc = cli(root, "run", "demo", "--size", "small")
    assert proc.returncode == 0, proc.stderr
    return root


def test_small_run_writes_ledger_and_executed_chapter(book):
    rec = json.loads((book / "results" / "demo" / "small.json").read_text())
    assert rec["claims"][0]["verdict"] == "reproduced"
    assert rec["seeds"] == [0, 1, 2] and rec["wall_s"] > 0
    executed = notebooks.load(book / "book" / "chapters" / "demo.ipynb")
    assert notebooks.stamped(executed)["source_hash"] == notebooks.source_hash(book / "notebooks" / "demo.ipynb")
    assert rec["source_hash"] == notebooks.stamped(executed)["source_hash"]
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-chapter"], "unknown chapter 'no-such-chapter'"),
    (["run", "demo", "--size", "huge"], "unknown size 'huge'"),
    (["run", "demo", "--set", "nosuchparam=1"], "unknown parameter 'nosuchparam'"),
    (["run", "demo", "--set", "fail=True"], "RuntimeError: deliberate failure"),
    (["run", "demo", "--size", "small", "--set", "shift=0.0", "--set", "seeds=1"], "at least 3 seeds"),
])
def test_errors_exit_2_with_one_line_and_write_nothing(book, args, message):
    before = snapshot(book)
    proc = cli(book, *args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("replibook: error")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert snapshot(book) == before


def test_smoke_run_never_touches_the_committed_chapter(book):
    before = snapshot(book)
    proc = cli(book, "run", "demo", "--size", "smoke", "--set", "shift=0.2")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(book) == before
    smoke = json.loads((book / "cache" / "smoke" / "demo.json").read_text())
    assert smoke["claims"][0]["verdict"] == "not assessed" and smoke["params"]["shift"] == 0.2


def test_status_reports_staleness(book):
    proc = cli(book, "status")
    assert proc.returncode == 0 and "demo" in proc.stdout and "fresh" in proc.stdout
    nb = notebooks.load(book / "notebooks" / "demo.ipynb")
    nb["cells"].append(nbformat.v4.new_markdown_cell("an edit"))
    scratch = book.parent / "stale-copy"
    shutil.copytree(book, scratch)
    (scratch / "notebooks" / "demo.ipynb").write_text(notebooks.dumps(nb))
    proc = cli(scratch, "status")
    assert "predates the notebook" in proc.stdout


def test_scoreboard_lists_the_chapter(book):
    from replibook import scoreboard
    text = scoreboard.render(book)
    assert "| Demo part | [Demo paper](chapters/demo.ipynb) | analog | 1 | 1 reproduced | small | 3 |" in text
    assert "+10 pt (Table 1)" in text


def test_parse_set_literals_never_eval():
    assert parse_set(["a=1", "b=[1, 2]", "c=cuda", "d='x'", "e=None"]) == {
        "a": 1, "b": [1, 2], "c": "cuda", "d": "x", "e": None}
    assert parse_set(["x=__import__('os').getcwd()"]) == {"x": "__import__('os').getcwd()"}
