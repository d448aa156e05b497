"""Training loops (`fit`, and `stream_fit` for data streamed from a loader) and probes on frozen features."""
from .fit import History, fit, stream_fit
from . import freeze  # noqa: E402,F401  (freeze_all_but, freeze_all_but_bn, random_k_per_channel)

__all__ = ["fit", "stream_fit", "History"]
