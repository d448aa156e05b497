"""``replibook`` command line: run chapters, show their status, build the book, build zoo entries.

Every expected failure (unknown chapter, size or parameter, a failing notebook,
missing data) is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import catalog, notebooks, runner, scoreboard
from .ledger import SIZES
from .errors import ReplibookError, UnknownName


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"replibook: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.size not in SIZES:
        raise UnknownName(f"unknown size '{args.size}' (sizes: {', '.join(SIZES)})")
    slugs = [c.slug for c in catalog.chapters()] if args.all else args.slugs
    if not slugs:
        raise ReplibookError("name at least one chapter, or --all")
    sets = runner.parse_set(args.set)
    # Check every chapter and parameter before running any, so a typo costs nothing.
    for slug in slugs:
        declared = notebooks.parameters(catalog.get(slug).source)
        unknown = sorted(set(sets) - set(declared))
        if unknown:
            raise UnknownName(f"unknown parameter '{unknown[0]}' for chapter '{slug}' "
                              f"(parameters: {', '.join(sorted(declared))})")
    jobs = max(1, args.jobs)
    if jobs > 1 and "REPLIBOOK_THREADS" not in os.environ:
        os.environ["REPLIBOOK_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    failures: list[str] = []

    def one(slug: str) -> None:
        try:
            runner.run_chapter(slug, args.size, sets)
        except ReplibookError as e:
            failures.append(str(e))
            print(f"replibook: error: {e}", file=sys.stderr, flush=True)

    if jobs == 1:
        for slug in slugs:
            one(slug)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, slugs))
    return 2 if failures else 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = runner.status()
    print(f"{'chapter':32s} {'part':28s} {'small':>9s} {'full':>9s}  {'verdicts':40s} state")
    for s in rows:
        small = f"{s.sizes['small']:.0f}/180s" if "small" in s.sizes else "-"
        full = f"{s.sizes['full']:.0f}s" if "full" in s.sizes else "-"
        verdicts = ", ".join(f"{n} {v}" for v, n in s.verdicts.items()) or "-"
        state = "; ".join(s.stale + s.over_budget) or "fresh"
        print(f"{s.slug:32s} {(s.part or '(not in _toc.yml)')[:28]:28s} {small:>9s} {full:>9s}  {verdicts[:40]:40s} {state}")
    return 0


def build_html(strict: bool = False) -> int:
    root = catalog.root()
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if exe is None:
        raise ReplibookError("jupyter-book is not installed: run `make setup` (pip install -e '.[book,test]')")
    cmd = [exe, "build", str(root), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return subprocess.run(cmd, cwd=root).returncode


def _cmd_book(args: argparse.Namespace) -> int:
    if not args.no_execute:
        stale = [s.slug for s in runner.status() if s.stale]
        if stale:
            print(f"executing stale chapters at small: {', '.join(stale)}", file=sys.stderr)
            ns = argparse.Namespace(slugs=stale, all=False, size="small", set=[], jobs=args.jobs)
            if _cmd_run(ns) != 0:
                return 2
    path = scoreboard.write()
    print(f"wrote {path}", file=sys.stderr)
    if args.no_build:
        return 0
    rc = build_html(strict=args.strict)
    if rc != 0:
        raise ReplibookError(f"jupyter-book build failed (exit {rc})")
    print(f"book built: {catalog.root() / '_build' / 'html' / 'index.html'}", file=sys.stderr)
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from . import zoo
    zoo.discover()          # entries registered by chapters' methods modules
    if args.action == "list":
        for name in zoo.available():
            card = zoo.card(name)
            print(f"{name:28s} {card.get('source', ''):18s} {card.get('summary', card.get('trained_on', ''))}")
        return 0
    if not args.name:
        raise ReplibookError("zoo build needs an entry name (see `replibook zoo list`)")
    for name in args.name:
        path = zoo.build(name, force=args.force)
        print(f"{name}: {path}", file=sys.stderr)
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="replibook", description="Run and build the replibook chapters.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="execute chapters with papermill at a size")
    r.add_argument("slugs", nargs="*", help="chapter slugs (see `replibook status`)")
    r.add_argument("--all", action="store_true", help="every chapter")
    r.add_argument("--size", default="small", help="smoke | small | full (default: small)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter; VALUE is a Python literal")
    r.add_argument("--jobs", type=int, default=1, help="chapters run in parallel")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("status", help="per chapter: sizes run, wall times, verdicts, staleness")
    s.set_defaults(func=_cmd_status)

    b = sub.add_parser("book", help="execute stale chapters at small, write the scoreboard, build the HTML")
    b.add_argument("--no-execute", action="store_true", help="do not run stale chapters")
    b.add_argument("--no-build", action="store_true", help="stop after the scoreboard")
    b.add_argument("--strict", action="store_true", help="warnings are errors in the HTML build")
    b.add_argument("--jobs", type=int, default=1)
    b.set_defaults(func=_cmd_book)

    z = sub.add_parser("zoo", help="stand-in pretrained models: list, build NAME")
    z.add_argument("action", help="list | build")
    z.add_argument("name", nargs="*")
    z.add_argument("--force", action="store_true", help="rebuild even if cached")
    z.set_defaults(func=_cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except ReplibookError as e:
        print(f"replibook: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replibook: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
