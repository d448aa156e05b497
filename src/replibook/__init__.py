"""replibook: a reproducible book of representation-learning paper replications.

The notebook-facing API lives at the top level::

    from replibook import Chapter, M, Greater, show

Names are imported on first use (PEP 562), so the command line starts fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Chapter": "chapter", "format_mean_std": "chapter",
    "M": "claims", "Greater": "claims", "Less": "claims", "Within": "claims", "AtLeast": "claims",
    "AtMost": "claims", "Check": "claims", "AllOf": "claims", "NotWorse": "claims",
    "NotBelow": "claims", "AnyOf": "claims", "OnlySupports": "claims", "FewerTotal": "claims",
    "IntervalAbove": "claims",
    "show": "listing",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'replibook' has no attribute '{name}'")
