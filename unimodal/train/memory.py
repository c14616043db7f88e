"""Peak memory of this rank's training process, for `done.json`: what a run costs beside its time."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured): the accelerator's peak allocated memory, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10), "peak RSS of the rank process"
