"""Training loops (`fit`) and probes on frozen features."""
from .fit import History, fit
from . import freeze  # noqa: E402,F401  (freeze_all_but, freeze_all_but_bn, random_k_per_channel)

__all__ = ["fit", "History"]
