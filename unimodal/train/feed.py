"""Batches onto the device without stalling it: pinned host memory, copies on a side stream.

On a GPU the loader pins each batch (the DataLoader's pin-memory thread;
`build_train_loader(pin_memory=True)`), so its host-to-device copy can run
asynchronously. The copy is queued on a stream of its own: since the step
never waits on the host between logging steps (see the README, "Host
synchronisation"), the host is already ahead of the device when it fetches
the next batch, and that batch's copy overlaps the kernels of the step still
running. The compute stream waits for the copy (an event, not the host) before
its first kernel reads the batch. On the CPU a copy is a no-op and this is
just the dtype cast.
"""

from __future__ import annotations

import torch


class DeviceFeed:
    """Moves a collated batch's tensors to `device`; floating tensors to the model's `dtype`."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _copy(self, batch: dict) -> dict:
        return {
            k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else None, non_blocking=True)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }

    def __call__(self, batch: dict) -> dict:
        if self.stream is None:
            return self._copy(batch)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            out = self._copy(batch)
        compute.wait_stream(self.stream)
        for v in out.values():
            v.record_stream(compute)  # its memory is not reused until the compute stream is done with it
        return out
