"""Where and how computations run: device, seeds, threads, paths, environment card.

Every chapter and every shared module asks this module for the device and the
data/cache directories, so that one environment variable changes them all:

- ``REPLIBOOK_DEVICE``  force a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``)
- ``REPLIBOOK_THREADS`` torch intra-op threads (default: torch's own choice)
- ``REPLIBOOK_DATA``    local dataset mirrors (developers and CI: ``../shared/data``)
- ``REPLIBOOK_ROOT``    the book checkout (default: where this package is installed from)
- ``REPLIBOOK_CACHE``   decoded datasets, zoo weights, cached features
  (default ``~/.cache/replibook``)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on first use so the CLI starts fast
    import torch


__all__ = [
    "device", "seed_everything", "set_threads", "use_deterministic",
    "data_dir", "cache_dir", "repo_root", "environment_card", "config_hash",
    "amp_enabled", "autocast",
]


def device(prefer: str | None = None) -> torch.device:
    """The device computations go to: ``prefer`` > ``$REPLIBOOK_DEVICE`` > cuda > mps > cpu."""
    import torch
    choice = prefer or os.environ.get("REPLIBOOK_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch CPU generator seeded alike.

    Same seed, same numbers on CPU (tested). On CUDA, cuDNN autotuning makes results
    close but not bit-identical unless `use_deterministic(True)` is also called.
    """
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_deterministic(on: bool = True) -> None:
    """Ask torch for deterministic kernels (slower on GPU; a no-op in effect on CPU)."""
    import torch
    torch.use_deterministic_algorithms(on, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not on
        torch.backends.cudnn.deterministic = on


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count from ``n`` or ``$REPLIBOOK_THREADS``; return it."""
    import torch
    n = n or int(os.environ.get("REPLIBOOK_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def amp_enabled(dev: torch.device | str | None = None) -> bool:
    """Mixed precision is used on CUDA only (CPU bf16 autocast is slower on small models)."""
    import torch
    dev = torch.device(dev) if dev is not None else device()
    return dev.type == "cuda"


def autocast(dev: torch.device | str | None = None):
    """`torch.autocast` context for ``dev``: bf16/fp16 on CUDA, disabled elsewhere."""
    import torch
    dev = torch.device(dev) if dev is not None else device()
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(dev.type, enabled=False)


def repo_root() -> Path:
    """The book's checkout: ``$REPLIBOOK_ROOT``, else the checkout this package was
    installed from (editable install), else the cwd."""
    if os.environ.get("REPLIBOOK_ROOT"):
        return Path(os.environ["REPLIBOOK_ROOT"]).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "notebooks").is_dir():
            return parent
    return Path.cwd()


def data_dir(required: bool = False) -> Path | None:
    """``$REPLIBOOK_DATA`` as a Path (None when unset and not ``required``)."""
    value = os.environ.get("REPLIBOOK_DATA")
    if value:
        return Path(value).expanduser()
    if required:
        from .errors import DatasetMissing
        raise DatasetMissing(
            "REPLIBOOK_DATA is not set: point it at a folder holding the dataset mirrors "
            "(developers: ../shared/data) or at an empty folder where torchvision may download")
    return None


def cache_dir(*parts: str) -> Path:
    """``$REPLIBOOK_CACHE/<parts>`` (default ``~/.cache/replibook``), created on demand."""
    root = Path(os.environ.get("REPLIBOOK_CACHE") or Path.home() / ".cache" / "replibook").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(config: dict[str, Any], length: int = 10) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment_card(dev: torch.device | None = None) -> dict[str, Any]:
    """Versions, hardware and git state recorded with every ledger record."""
    import numpy as np
    import torch
    dev = dev or device()
    card: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if dev.type == "cuda":
        card["gpu"] = torch.cuda.get_device_name(dev)
    sha = _git("rev-parse", "HEAD")
    card["git_sha"] = sha
    status = _git("status", "--porcelain", "--untracked-files=no")
    card["git_dirty"] = bool(status) if status is not None else None
    return card
