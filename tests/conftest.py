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
