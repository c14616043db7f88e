"""The process group, and collectives on host tensors whatever the backend.

`init_distributed` sets up torch's process group with the recipe's collective
timeout, then DeepSpeed's view of it. Under torchrun the ranks meet in the
agent's TCP store, which torchrun keeps across its restarts of the ranks; the
keys of a round are not prefixed by torch, so a restarted round read the
addresses the dead round's ranks had published, and gloo's full-mesh connect
was refused. Each round's ranks here meet under a prefix of their own
(TORCHELASTIC_RESTART_COUNT).

The trainer keeps its metric and balancing sums on the host; NCCL reduces only
device tensors, gloo either. Going through the accelerator's device works for
both (on a CPU-only machine that device is the CPU).
"""

from __future__ import annotations

import os
from datetime import timedelta

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


def init_distributed(timeout_s: float) -> None:
    """Join the job's process group; a collective waiting over `timeout_s` fails instead of hanging."""
    timeout = timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):  # torchrun's agent hosts the store
        agent = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
        store = dist.PrefixStore(f"unimodal/round{os.environ['TORCHELASTIC_RESTART_COUNT']}", agent)
        dist.init_process_group(
            get_accelerator().communication_backend_name(),
            store=store,
            timeout=timeout,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    deepspeed.init_distributed(timeout=timeout)  # DeepSpeed takes over a group already set up


def all_reduce_sum(host: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `host` over all ranks, as a new host tensor."""
    total = host.to(get_accelerator().current_device_name(), copy=True)
    dist.all_reduce(total)
    return total.cpu()
