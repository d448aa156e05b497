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


def four_blob_images(n: int = 96, seed: int = 0):
    """``(n, 1, 12, 12)`` images of four classes (a bright 6x6 square in the class's corner, class
    ``i % 4``) on faint noise: a task a tiny encoder learns in a few updates (SSL loop tests)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, 12, 12, generator=g)
    for i in range(n):
        c = i % 4
        r, s = (c // 2) * 6, (c % 2) * 6
        x[i, :, r:r + 6, s:s + 6] += 0.8
    return x.clamp(0, 1)
