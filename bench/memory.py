"""Per-rank memory of model states under ZeRO 0, 1, 2 and 3, with 2 ranks, next to the theory.

Model states are the parameters, their gradients and the optimiser's state.
In bf16 mixed precision that is 16 bytes a parameter on every rank without ZeRO
(bf16 weights 2, bf16 gradients 2, fp32 master weights and AdamW's two moments
12); ZeRO-1 partitions the 12, ZeRO-2 the gradients too, ZeRO-3 the weights
too, so per rank (N ranks; the ZeRO paper's accounting):

    ZeRO-0  16 P      ZeRO-1  (4 + 12/N) P      ZeRO-2  (2 + 14/N) P      ZeRO-3  16 P / N

ZeRO-3 runs with small gather/prefetch/reduce buckets (LEAN_ZERO3), the
settings for a model that barely fits; DeepSpeed's defaults keep gathered
weights alive for reuse, which is faster and costs memory (`--ds-defaults`).

Measured: each rank's resident memory after building the model, DeepSpeed's
engine and one training step on a tiny batch (activations freed; tensors
allocated with mmap so that freed memory leaves at once), minus its resident
memory before the model existed. A first engine on the `tiny` preset loads
DeepSpeed's ops and libraries beforehand: code is not model state. DeepSpeed's
flat buffers and communication buckets are included: they are what a user pays.

    python bench/memory.py [--preset small] [--stages 0,1,2,3]

Last line: JSON with per-stage bytes and `zero3_over_zero0`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THEORY = {0: lambda n: 16, 1: lambda n: 4 + 12 / n, 2: lambda n: 2 + 14 / n, 3: lambda n: 16 / n}
LEAN_ZERO3 = {
    "stage3_max_live_parameters": 1_000_000,
    "stage3_max_reuse_distance": 0,
    "stage3_prefetch_bucket_size": 1_000_000,
    "stage3_param_persistence_threshold": 10_000,
    "reduce_bucket_size": 5_000_000,
}


def resident_bytes() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(preset: str, stage: int, out: str, overrides: list[str]) -> None:
    """One rank: build, take one step, report resident bytes gained (run under torchrun)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from unimodal.model import UnifiedModel, count_parameters
    from unimodal.recipe import load_recipe
    from unimodal.tokenize.sequence import Segment, TokenSequence, collate
    from unimodal.train.engine import build_engine, model_config

    deepspeed.init_distributed()

    def recipe_for(preset: str):
        sets = [f"model.preset={preset}", f"deepspeed.zero_optimization.stage={stage}", *overrides]
        return load_recipe(REPO / "recipes/smoke/stage1.yaml", sets, check_files=False)

    patch_dims = {"image": 192, "audio": 160, "video": 384}
    seq = TokenSequence(
        [Segment("text", torch.arange(4, 12)), Segment("image", torch.randn(4, 192))], torch.arange(4, 10), 0
    )
    batch = collate([seq], patch_dims, bos_id=2)

    def one_step(preset: str) -> tuple[int, object]:
        torch.manual_seed(0)
        recipe = recipe_for(preset)
        model = UnifiedModel(model_config(recipe, 8000, patch_dims))
        params = count_parameters(model)
        engine = build_engine(recipe, model)
        engine.backward(engine(batch)["loss"])
        engine.step()
        return params, engine

    one_step("tiny")  # loads DeepSpeed's ops and libraries: code, not model states
    dist.barrier()
    before = resident_bytes()
    params, _engine = one_step(preset)
    gained = resident_bytes() - before
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, gained)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"params": params, "ranks": dist.get_world_size(), "bytes": results}))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def measure(preset: str, stage: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        # big tensors from mmap, so that a freed one leaves the resident set at once
        env = dict(
            os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536"
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29600 + stage),
            __file__,
            "--worker",
            "--preset",
            preset,
            "--stage",
            str(stage),
            "--out",
            str(out),
        ]
        cmd += [f"--set={o}" for o in overrides]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0 or not out.is_file():
            sys.exit(f"ZeRO-{stage} run failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--ds-defaults", action="store_true", help="ZeRO-3 with DeepSpeed's default buckets, not LEAN_ZERO3")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="train in bf16 (default)")
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="recipe override, e.g. deepspeed.bf16.enabled=true",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.preset, args.stage, args.out, args.set)

    rows, summary = [], {"bench": "memory", "preset": args.preset}
    for stage in (int(s) for s in args.stages.split(",")):
        sets = [f"deepspeed.bf16.enabled={str(args.bf16).lower()}"]
        if stage == 3 and not args.ds_defaults:
            sets += [f"deepspeed.zero_optimization.{k}={v}" for k, v in LEAN_ZERO3.items()]
        r = measure(args.preset, stage, sets + args.set)
        per_rank = max(r["bytes"])
        theory = THEORY[stage](r["ranks"]) * r["params"]
        rows.append((stage, per_rank, theory))
        summary["params"] = r["params"]
        summary[f"zero{stage}_bytes"] = per_rank
        summary[f"zero{stage}_theory_bytes"] = int(theory)
    print(
        f"{args.preset}: {summary['params'] / 1e6:.1f}M parameters, 2 ranks, AdamW, {'bf16' if args.bf16 else 'fp32'}"
    )
    print(f"{'ZeRO':>5} {'measured/rank':>14} {'theory/rank':>12} {'measured/theory':>16}")
    for stage, per_rank, theory in rows:
        print(f"{stage:>5} {per_rank / 2**20:>11.0f} MB {theory / 2**20:>9.0f} MB {per_rank / theory:>16.2f}")
    if "zero0_bytes" in summary and "zero3_bytes" in summary:
        summary["zero3_over_zero0"] = round(summary["zero3_bytes"] / summary["zero0_bytes"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
