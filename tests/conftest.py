"""Test-session settings.

`make test` runs pytest-xdist with two workers on a two-core machine; one torch
thread per worker (and per notebook kernel, through ``REPLIBOOK_THREADS``, which
`Chapter` applies) avoids oversubscription, which made the suite 3x slower.
Tests run on the CPU whatever the machine has, so results do not depend on it.
"""
import os

os.environ.setdefault("REPLIBOOK_THREADS", "1")
os.environ.setdefault("REPLIBOOK_DEVICE", "cpu")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["REPLIBOOK_THREADS"]))


import pytest  # noqa: E402


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty REPLIBOOK_CACHE (zoo builds, features) and a clean record of used zoo entries."""
    from replibook import zoo
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    zoo.reset_used()
    yield tmp_path / "cache"
    zoo.reset_used()
