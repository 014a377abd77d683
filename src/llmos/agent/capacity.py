"""What a node offers (CPU cores, memory, GPUs) and how loaded it is now.

Read with psutil (and NVML when a GPU driver is there); ``--cpus`` and ``--memory``
cap what is offered, which is how one machine can act as several small nodes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psutil

from llmos.errors import ConfigError

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(text: str) -> int:
    """``3GiB``, ``512MiB``, ``2G``, ``1073741824`` -> bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"not a size: {text!r} (examples: 3GiB, 512MiB, 2G)")
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Capacity:
    cpus: float
    memory: int
    gpus: int = 0


def detect(cpus: float | None = None, memory: int | None = None) -> Capacity:
    """The machine's capacity, capped by what the operator offers."""
    have_cpus = float(psutil.cpu_count(logical=True) or 1)
    have_memory = int(psutil.virtual_memory().total)
    return Capacity(cpus=min(cpus, have_cpus) if cpus else have_cpus,
                    memory=min(memory, have_memory) if memory else have_memory,
                    gpus=gpu_count())


def gpu_count() -> int:
    """NVIDIA GPUs on this machine (NVML; 0 without a driver)."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no driver: no GPUs
        log.debug("NVML: %s", exc)
        return 0


def cpu_load() -> float:
    """Utilisation of the machine's CPUs since the last call, 0 to 1."""
    return float(psutil.cpu_percent(interval=None)) / 100.0
