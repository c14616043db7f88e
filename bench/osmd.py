"""Does a privileged modality seen only in training help at test time? OS-MD against its baselines.

AV-MNIST-style pairs (`unimodal data avmnist`): a digit scan degraded with
noise and an occluding square (the ordinary modality), and the same digit as
sound (the privileged modality, in the training shards only). Each method of
recipes/osmd is trained with every seed, then scored on the held-out scans,
which hold no sound: exact match of the digit word, i.e. accuracy.

    python bench/osmd.py [--seeds 0,1,2] [--jobs 3] [--steps 300] [--scale 1] [--methods osmd,...] [--set FIELD=VALUE ...]

Methods, each `--steps` optimiser steps in all, on the same data and model size:
  ordinary   the image alone (ordinary.yaml)
  osmd       one stage: CE through image + hallucinated sound features, CE through image +
             real sound features, and their distillation, in one loss (osmd.yaml)
  two_stage  stage 1 trains the teacher and the hallucination for --steps/2; stage 2 freezes
             the encoder and trains the fusion for the other half (two_stage/)

`--set` overrides go to every method's recipes (e.g. data.batch_tokens=1024; a
distill option with `--methods osmd`). Last line: JSON with each method's
mean, standard deviation and per-seed accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
OSMD = REPO / "recipes" / "osmd"
METHODS = ("ordinary", "osmd", "two_stage")


def unimodal(*args: str) -> str:
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "unimodal.cli", *args], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"unimodal {' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return run.stdout


def flags(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def accuracy(recipe: Path, out: Path, sets: list[str]) -> float:
    """Held-out exact match of the run in `out`, from the scans alone."""
    unimodal("eval", str(recipe), "--checkpoint", str(out), "--json", str(out / "eval.json"), *flags(sets))
    return json.loads((out / "eval.json").read_text())["digits"]["metrics"]["exact_match"]


def run_method(method: str, seed: int, steps: int, runs: Path, common: list[str], sets: list[str]) -> float:
    run = [f"seed={seed}", "logging.wandb.mode=disabled", *sets]
    out = runs / f"{method}-{seed}"
    if method != "two_stage":
        recipe = OSMD / f"{method}.yaml"
        stage = [*run, f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.output_dir={out}"]
        unimodal("train", str(recipe), *common, *flags(stage))
        return accuracy(recipe, out, stage)
    half, first = steps // 2, runs / f"{method}-{seed}-stage1"
    stage1 = [*run, f"train.steps={half}", f"train.checkpoint_every={half}", f"train.output_dir={first}"]
    unimodal("train", str(OSMD / "two_stage" / "stage1.yaml"), *common, *flags(stage1))
    stage2 = [
        *run,
        f"init_from={first}",
        f"train.steps={steps - half}",
        f"train.checkpoint_every={steps - half}",
        f"train.output_dir={out}",
    ]
    unimodal("train", str(OSMD / "two_stage" / "stage2.yaml"), *common, *flags(stage2))
    return accuracy(OSMD / "two_stage" / "stage2.yaml", out, stage2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per method (two_stage: half a stage)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the scans written")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at once (each seed's methods in turn)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override in every recipe")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if not set(methods) <= set(METHODS):
        p.error(f"--methods: {args.methods}: choose among {', '.join(METHODS)}")
    common = ["--nproc", str(args.nproc)]
    cwd, started = os.getcwd(), time.perf_counter()
    results: dict[str, dict[int, float]] = {m: {} for m in methods}
    with TemporaryDirectory() as tmp:
        ws = Path(tmp)
        os.chdir(ws)  # the recipes name data/avmnist and runs/osmd relative to the working directory
        try:
            print(unimodal("data", "avmnist", "data/avmnist", "--scale", str(args.scale)).strip(), flush=True)
            shards = sorted(str(s) for s in (ws / "data" / "avmnist" / "train").glob("*.tar"))
            unimodal("tokenizer", "train", *shards, "--out", "runs/osmd/tokenizer", "--vocab-size", "64")

            def run_seed(seed: int) -> None:
                for method in methods:
                    results[method][seed] = run_method(
                        method, seed, args.steps, ws / "runs" / "bench", common, args.set
                    )
                    print(
                        f"seed {seed}  {method:9}  accuracy {results[method][seed]:.3f}  "
                        f"({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )

            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(run_seed, seeds))  # re-raises a failed run's error
        finally:
            os.chdir(cwd)

    summary: dict = {"bench": "osmd", "steps": args.steps, "scale": args.scale, "sets": args.set, "seeds": seeds}
    print(f"\nheld-out accuracy from the image alone, {args.steps} steps, seeds {args.seeds}:")
    for method in methods:
        accs = [results[method][s] for s in seeds]
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"  {method:9}  mean {mean:.3f}  std {std:.3f}  min {min(accs):.3f}  max {max(accs):.3f}  "
            + "  ".join(f"{a:.3f}" for a in accs)
        )
        summary |= {f"{method}_mean": mean, f"{method}_std": std, method: {str(s): a for s, a in zip(seeds, accs)}}
    if {"osmd", "ordinary"} <= set(methods):
        wins = sum(results["osmd"][s] > results["ordinary"][s] for s in seeds)
        summary["osmd_beats_ordinary_seeds"] = wins
        print(f"  osmd above ordinary in {wins} of {len(seeds)} seeds")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
