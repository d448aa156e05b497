"""Which chapters exist and where they sit in the book.

The chapters are the notebooks in ``notebooks/``; their book part is the
``caption`` of the ``_toc.yml`` part that lists ``book/chapters/<slug>``. The
table of contents is the single source of the book's structure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from . import runtime
from .errors import UnknownName


@dataclass(frozen=True)
class ChapterEntry:
    slug: str
    source: Path          # notebooks/<slug>.ipynb
    executed: Path        # book/chapters/<slug>.ipynb
    part: str | None      # caption of its _toc.yml part (None: not in the book yet)


def root(path: Path | str | None = None) -> Path:
    return Path(path) if path is not None else runtime.repo_root()


def toc_parts(repo: Path | str | None = None) -> dict[str, str]:
    """``{slug: part caption}`` for every chapter listed in ``_toc.yml``."""
    toc_path = root(repo) / "_toc.yml"
    if not toc_path.exists():
        return {}
    toc = yaml.safe_load(toc_path.read_text()) or {}
    out: dict[str, str] = {}
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            file = str(entry.get("file", ""))
            if file.startswith("book/chapters/"):
                out[Path(file).stem] = part.get("caption", "")
    return out


def chapters(repo: Path | str | None = None) -> list[ChapterEntry]:
    r = root(repo)
    parts = toc_parts(r)
    return [ChapterEntry(p.stem, p, r / "book" / "chapters" / p.name, parts.get(p.stem))
            for p in sorted((r / "notebooks").glob("*.ipynb"))]


def get(slug: str, repo: Path | str | None = None) -> ChapterEntry:
    known = {c.slug: c for c in chapters(repo)}
    if slug not in known:
        raise UnknownName(f"unknown chapter '{slug}' (chapters: {', '.join(sorted(known)) or 'none'})")
    return known[slug]
