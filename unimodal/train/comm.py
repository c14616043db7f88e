"""Collectives on host tensors, whatever the backend.

The trainer keeps its metric and balancing sums on the host; NCCL reduces only
device tensors, gloo either. Going through the accelerator's device works for
both (on a CPU-only machine that device is the CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


def all_reduce_sum(host: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `host` over all ranks, as a new host tensor."""
    total = host.to(get_accelerator().current_device_name(), copy=True)
    dist.all_reduce(total)
    return total.cpu()
