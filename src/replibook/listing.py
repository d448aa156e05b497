"""`show(fn)`: put the source of a library function into the chapter, as a code listing.

Chapters call the tested implementation in ``src/replibook`` and *show* it, so
the code a reader sees is the code that ran (no copy that can drift).
"""
from __future__ import annotations

import inspect
import textwrap
from typing import Any


def source_of(obj: Any, doc: bool = True) -> str:
    """Source text of a function, class or method; docstring dropped when ``doc=False``."""
    src = textwrap.dedent(inspect.getsource(obj))
    if not doc and getattr(obj, "__doc__", None):
        first = src.find('"""')
        if first != -1:
            end = src.find('"""', first + 3)
            if end != -1:
                src = src[:first].rstrip(" ") + src[end + 3:].lstrip("\n")
    return src


def show(*objs: Any, doc: bool = True):
    """Display the source of ``objs`` as a highlighted code block with its module path."""
    from IPython.display import Markdown
    parts = []
    for obj in objs:
        module = getattr(obj, "__module__", "")
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        parts.append(f"`{module}.{name}`\n\n```python\n{source_of(obj, doc).rstrip()}\n```")
    return Markdown("\n\n".join(parts))
