"""Attention on packed rows: dense-mask SDPA (the reference) against varlen buckets and FlexAttention's block mask.

The encoder layer stack of the `base` preset (d 768, 12 heads) runs on rows
of 512, 2048 and 8192 tokens packed by the loader from the demo mixture
(smoke stage 2: images, text, audio, video), each view of a sample attending
to itself only. Per row length: wall time of a step of each path, and the
attention FLOPs each computes over those the samples need (the sum of their
views' squared lengths): the dense mask computes every query-key pair of a
row, varlen (`model.attention: varlen`) each view's own square, the block mask
every tile of `--block` x `--block` tokens that holds a pair of one view.

On CPU a step is a forward pass (FlexAttention has no backward on CPU) for
all three paths, and with `--backward` dense and varlen are also timed
forward + backward; on a GPU, every path forward and backward in bf16. On CPU the 8192 rows run
`--layers-8192` layers (default 2) to keep the run to a few minutes; the
FLOPs ratios do not depend on the layer count. The demo's views are short
(~40 tokens), so tiles of 128 would waste most of what they compute; for
comparison the table ends with the FLOPs ratios on rows of 2048 holding
UnIVAL-sized samples (bench/mfu.py's mix: 196-token images, 496-token audio,
1,568-token clips, 32-128-token texts) at tiles of 32, 64 and 128.

    python bench/attention.py [--device cpu] [--block 32] [--repeats 2] [--backward]

Last line: JSON with `speedup_2048` (dense time over varlen time, forward
passes on CPU), `dense_flops_ratio_2048`, `new_flops_ratio_2048` (varlen's),
the same figures of flex (`flex_speedup_2048`, `flex_flops_ratio_2048`),
`train_speedup_2048` with `--backward` on CPU (dense over varlen) and
`device`.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import numpy as np
import torch
from mfu import mixed_batch
from workspace import REPO, demo_workspace

from unimodal.data.loader import build_train_loader
from unimodal.model import ModelConfig
from unimodal.model.transformer import Stack, attention_mask, block_mask, tile_occupancy
from unimodal.model.unified import view_ids
from unimodal.model.varlen import varlen_plan
from unimodal.recipe import load_recipe

LENGTHS = (512, 2048, 8192)


def packed_views(length: int, rows: int) -> torch.Tensor:
    """View ids [rows, length] (-1 at padding) of the first loader batch with rows of `length` tokens."""
    sets = ["data.workers=0", f"data.pack_length={length}", f"data.batch_tokens={rows * (length + length // 4)}"]
    recipe = load_recipe(REPO / "recipes" / "smoke" / "stage2.yaml", sets)
    batch = next(iter(build_train_loader(recipe, 0, 1)))
    return view_ids(batch)[:rows]


def flops_ratios(views: torch.Tensor, block: int) -> tuple[float, float, float]:
    """Attention pairs computed over pairs needed: dense mask, varlen buckets, block mask."""
    real = views >= 0
    dense = attention_mask(views, views)[:, 0] & real[:, :, None]
    needed = int(dense.sum())
    some, _ = tile_occupancy(dense, block)
    varlen = varlen_plan(views, views, causal=False).pairs()
    return views.numel() * views.shape[1] / needed, varlen / needed, int(some.sum()) * block * block / needed


def step_seconds(stack: Stack, x: torch.Tensor, mask, train: bool, repeats: int) -> float:
    """Best of `repeats` steps, after one untimed (compiling) step."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    best = float("inf")
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        with nullcontext() if train else torch.no_grad():
            y = stack(x, mask)
            if train:
                y.float().square().mean().backward()
        sync()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--block", type=int, default=32, help="flex tile size (query x key tokens)")
    p.add_argument("--rows", type=int, default=2, help="packed rows a step (1 at 8192)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backward", action="store_true", help="on CPU, also time dense and varlen forward + backward")
    p.add_argument(
        "--layers-8192", type=int, default=None, help="encoder layers at 8192 (default: 2 on CPU, all on a GPU)"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    train = device.type == "cuda"
    dtype = torch.bfloat16 if train else torch.float32
    base = ModelConfig.from_preset("base", 1024, {"image": 768, "audio": 256, "video": 1536}, max_positions=8192)
    with demo_workspace():
        views = {n: packed_views(n, 1 if n == 8192 else args.rows) for n in LENGTHS}

    print(
        f"encoder stack of `base` (d {base.d_model}, {base.n_heads} heads), {device.type}, {dtype}, "
        f"{'forward + backward' if train else 'forward (no FlexAttention backward on CPU)'}, flex tiles {args.block}"
    )
    header = ["row tokens", "rows", "views", "layers", "dense s", "varlen s", "flex s", "varlen speedup"]
    header += ["flex speedup", "dense FLOPs / needed", "varlen FLOPs / needed", "flex FLOPs / needed"]
    cpu_backward = args.backward and not train
    header += ["dense train s", "varlen train s", "varlen train speedup"] if cpu_backward else []
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    result = {
        "bench": "attention",
        "device": torch.cuda.get_device_name(device) if train else "cpu",
        "block": args.block,
    }
    for n, v in views.items():
        layers = base.enc_layers if n < 8192 else args.layers_8192 or (base.enc_layers if train else 2)
        cfg = base.model_copy(update={"enc_layers": layers})
        torch.manual_seed(0)
        stack = Stack(cfg, layers, decoder=False).to(device, dtype)
        v = v.to(device)
        x = torch.randn(*v.shape, cfg.d_model, device=device, dtype=dtype, requires_grad=True)
        masks = {
            "dense": attention_mask(v, v),
            "varlen": varlen_plan(v, v, causal=False),
            "flex": block_mask(v, v, causal=False, block=args.block),
        }
        s = {path: step_seconds(stack, x, mask, train, args.repeats) for path, mask in masks.items()}
        dense_ratio, varlen_ratio, flex_ratio = flops_ratios(v.cpu(), args.block)
        cells = [n, v.shape[0], len(torch.unique(v[v >= 0])), layers, *(f"{s[p]:.3f}" for p in masks)]
        cells += [f"{s['dense'] / s['varlen']:.2f}", f"{s['dense'] / s['flex']:.2f}"]
        cells += [f"{r:.2f}" for r in (dense_ratio, varlen_ratio, flex_ratio)]
        result |= {
            f"speedup_{n}": round(s["dense"] / s["varlen"], 3),
            f"dense_flops_ratio_{n}": round(dense_ratio, 3),
            f"new_flops_ratio_{n}": round(varlen_ratio, 3),
            f"flex_speedup_{n}": round(s["dense"] / s["flex"], 3),
            f"flex_flops_ratio_{n}": round(flex_ratio, 3),
            f"layers_{n}": layers,
        }
        if cpu_backward:  # dense and varlen have a CPU backward
            t = {p: step_seconds(stack, x, masks[p], True, args.repeats) for p in ("dense", "varlen")}
            cells += [f"{t['dense']:.3f}", f"{t['varlen']:.3f}", f"{t['dense'] / t['varlen']:.2f}"]
            result[f"train_speedup_{n}"] = round(t["dense"] / t["varlen"], 3)
        print("| " + " | ".join(map(str, cells)) + " |")
    rows = view_ids(mixed_batch(np.random.default_rng(0), 4 * 2560, 2048))
    unival = {b: flops_ratios(rows, b) for b in (32, 64, 128)}
    print(
        f"UnIVAL-sized samples, {rows.shape[0]} rows of 2048: dense FLOPs / needed {unival[128][0]:.2f}, "
        f"varlen {unival[128][1]:.2f}, flex " + ", ".join(f"{r[2]:.2f} at tiles of {b}" for b, r in unival.items())
    )
    result["unival_new_flops_ratio_2048"] = round(unival[128][1], 3)
    result |= {f"unival_flex_flops_ratio_2048_block{b}": round(r[2], 3) for b, r in unival.items()}
    result["unival_dense_flops_ratio_2048"] = round(unival[128][0], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
