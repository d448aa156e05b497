"""Training loops (`fit`) and probes on frozen features."""
from .fit import History, fit

__all__ = ["fit", "History"]
