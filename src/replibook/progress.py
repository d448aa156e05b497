"""`track`: a progress bar that suits where the chapter runs.

Interactive (JupyterLab, a terminal): a live ``tqdm.auto`` bar. Under `replibook run`
the executed notebook is committed and rendered as a static page, where a widget
bar would show as an empty box; there the loop prints one line when it ends
(``MLP runs: 18 done in 95.2 s``).
"""
from __future__ import annotations

import os
import time
from typing import Iterable, Iterator, TypeVar

from .ledger import RUN_DIR_ENV

T = TypeVar("T")


def track(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if os.environ.get(RUN_DIR_ENV):
        start, count = time.perf_counter(), 0
        for item in items:
            yield item
            count += 1
        print(f"{desc}: {count} done in {time.perf_counter() - start:.1f} s")
        return
    from tqdm.auto import tqdm
    yield from tqdm(items, desc=desc, total=total)
