"""The framework tax: unimodal's training step against a bare PyTorch loop, same model, same batches.

unimodal: `unimodal train` on 1 rank, exactly as a user runs it: DeepSpeed's
engine, the task sampler and loader, the metrics window with its all-reduce,
wandb (offline) and metrics.jsonl. The loader runs inline (`data.workers=0`)
by default, so its whole cost is inside the timed step: on a 2-core machine a
worker process would instead take one of the two cores the model's threads
run on, which measures CPU contention, not framework overhead (`--workers 1`
shows it; on a GPU node workers run on spare host cores). For the same
reason both loops compute on `--threads` torch threads, by default one
fewer than the machine's cores: the framework's own side processes (the
launcher, wandb's service, the progress bar) need a core now and then, and
with every core in the model's thread team each of their wake-ups stalls a
whole parallel region; on a GPU node they run on spare host cores too. Its tokens/s come from its own
metrics.jsonl, windows after the warm-up only.
bare: the same model config and seed, a plain torch AdamW with the same
groups and the recipe's gradient clipping, forward/backward/step over the very
batches the loader produced (built beforehand, so the bare loop does no data
work at all), no DeepSpeed, no logging.

    python bench/step_overhead.py [--preset small] [--steps 60] [--warmup 10] [--repeats 2]

Last line: JSON with both tokens/s and `ratio` (unimodal over bare).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from workspace import REPO, demo_workspace

from unimodal.data.loader import build_train_loader
from unimodal.model import UnifiedModel
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import IGNORE_INDEX
from unimodal.train.engine import model_config


def real_tokens(batch: dict) -> int:
    return int(batch["enc_mask"].sum() + (batch["dec_out"] != IGNORE_INDEX).sum())


def bare_tokens_per_s(recipe, batches: list[dict], warmup: int) -> float:
    torch.manual_seed(recipe.seed)
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    model = UnifiedModel(model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.train.lr,
        betas=(0.9, 0.98),
    )
    clip = recipe.deepspeed.get("gradient_clipping")
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        model(batch)["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return sum(real_tokens(b) for b in batches[warmup:]) / (time.perf_counter() - start)


def unimodal_tokens_per_s(
    recipe_path: Path, sets: list[str], batches: list[dict], workspace: Path, every: int, warmup: int
) -> float:
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_SILENT="true", OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-m", "unimodal.cli", "train", str(recipe_path), "--nproc", "1"]
    cmd += [a for s in sets for a in ("--set", s)]
    run = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"unimodal train failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    out = next(s.split("=", 1)[1] for s in sets if s.startswith("train.output_dir="))
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tokens = seconds = 0.0
    for rec in records:
        first = rec["step"] - every  # the window covers steps first+1 .. step
        if first >= warmup:
            window = sum(real_tokens(b) for b in batches[first : rec["step"]])
            tokens, seconds = tokens + window, seconds + window / rec["tokens_per_s"]
    return tokens / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--zero", type=int, default=0, help="ZeRO stage of the unimodal run (1 rank)")
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--workers", type=int, default=0, help="data.workers of the unimodal run (see the docstring)")
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of both loops (default: one fewer than the cores; see the docstring)",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="alternate the two loops this many times, keep each one's best"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # the bare loop's; the unimodal run's through OMP_NUM_THREADS
    every = 10
    if args.warmup % every or args.steps % every:
        sys.exit("--warmup and --steps must be multiples of 10 (the logging window)")

    with demo_workspace() as ws:
        recipe_path = REPO / "recipes" / "smoke" / "stage2.yaml"
        sets = [
            "init_from=null",
            f"model.preset={args.preset}",
            f"train.steps={args.steps}",
            f"train.checkpoint_every={10 * args.steps}",
            f"logging.every={every}",
            "logging.wandb.mode=offline",
            f"data.workers={args.workers}",
            f"data.batch_tokens={args.batch_tokens}",
            f"deepspeed.zero_optimization.stage={args.zero}",
        ]
        recipe = load_recipe(recipe_path, [*sets, f"train.output_dir={ws / 'run'}"])
        batches = [b for b, _ in zip(build_train_loader(recipe, 0, 1), range(args.steps))]
        for b in batches:
            b.pop("meta")
        runs = {"unimodal": [], "bare": []}
        for i in range(args.repeats):  # alternated, so that load from other jobs hits both alike
            run_sets = [*sets, f"train.output_dir={ws / f'run{i}'}"]
            runs["unimodal"].append(unimodal_tokens_per_s(recipe_path, run_sets, batches, ws, every, args.warmup))
            runs["bare"].append(bare_tokens_per_s(recipe, batches, args.warmup))
        ours, bare = max(runs["unimodal"]), max(runs["bare"])  # load only ever slows a run down

    ratio = ours / bare
    print(f"{args.preset}, 1 rank, {torch.get_num_threads()} threads, steps {args.warmup + 1}-{args.steps} timed")
    print(
        f"  unimodal (DeepSpeed ZeRO-{args.zero}, sampler, {args.workers} loader workers, logging): {ours:10.0f} tokens/s"
    )
    print(f"  bare PyTorch loop (AdamW, prebuilt batches):      {bare:10.0f} tokens/s")
    print(f"  ratio: {ratio:.3f} (best of {args.repeats}; load average {os.getloadavg()[0]:.2f} at the end)")
    print(
        json.dumps(
            {
                "bench": "step_overhead",
                "preset": args.preset,
                "zero_stage": args.zero,
                "workers": args.workers,
                "unimodal_tokens_per_s": round(ours, 1),
                "bare_tokens_per_s": round(bare, 1),
                "ratio": round(ratio, 4),
                "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
