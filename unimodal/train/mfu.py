"""The denominator of MFU: what the device could do, per second, in the training dtype.

GPUs: dense (not 2:4-sparsity) tensor-core peaks from the vendors' datasheets,
SXM parts. A CPU has no datasheet figure worth trusting, so its peak is
measured: the best of a few large matmuls in the training dtype, with the
threads this process trains with.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

# TFLOP/s, dense: (bf16/fp16 tensor cores, fp32 without TF32)
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
}


def measured_matmul_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The best of `repeats` n x n products through F.linear, the op of the model's Linear layers
    (on CPUs without bf16 units a plain bf16 `a @ b` runs a path 15x slower than F.linear's)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """FLOP/s of one device in `dtype` (None where unknown: no MFU then), and its source."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for part, (half, single) in GPU_PEAKS.items():
            if part in name:
                peak = half if dtype in (torch.bfloat16, torch.float16) else single
                return peak * 1e12, f"{name}: datasheet {peak:g} TFLOP/s dense"
        return None, f"{name}: no peak known (add it to unimodal.train.mfu.GPU_PEAKS); MFU not logged"
    flops = measured_matmul_flops(dtype)
    return flops, f"cpu: measured matmul {flops / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)"
