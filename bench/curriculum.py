"""Is a curriculum better than everything at once? UnIVAL's and MoMo's claim, on the demo data.

The smoke curriculum (recipes/smoke: stage 1 image + text, then stage 2 all
four modalities from stage 1's weights) against stage 2's recipe alone from
scratch, at the same total number of optimiser steps, with every seed:

  curriculum    stage1.yaml for --steps/2 steps, then stage2.yaml for the rest, from its weights
  all_at_once   stage2.yaml from scratch for --steps steps

Each is scored on the held-out shard of every modality (exact match, stage 2's
datasets). Curriculum stages keep their own warmup and decay, as
`unimodal curriculum` runs them.

    python bench/curriculum.py [--seeds 0,1,2] [--jobs 2] [--steps 300] [--scale 0.1]

Last line: JSON with `curriculum_mean` and `all_at_once_mean` (over modalities
and seeds), their spreads over seeds, `seeds`, and per-modality means and
per-seed values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from study import exact_match, over_seeds, smoke_recipe, study_workspace, summarise, train, write_recipe

ARMS = ("curriculum", "all_at_once")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps in all, of either arm")
    p.add_argument("--scale", type=float, default=0.1, help="demo scale")
    p.add_argument(
        "--data", type=Path, help="a workspace holding data/demo and runs/demo/tokenizer (default: a new one)"
    )
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="seeds trained at once (each seed's arms in turn)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    with study_workspace(args.data, args.scale) as scratch:
        stage1 = write_recipe(smoke_recipe("stage1"), scratch / "recipes" / "stage1.yaml")
        everything = smoke_recipe("stage2")
        stage2 = write_recipe(everything, scratch / "recipes" / "stage2.yaml")
        modality = {d["name"]: next(iter(d["inputs"])) for d in everything["data"]["datasets"]}

        def run_seed(seed: int) -> dict[str, float]:
            runs, half = scratch / "runs" / f"seed{seed}", args.steps // 2
            train(stage1, runs / "stage1", half, seed, args.nproc)
            train(stage2, runs / "curriculum", args.steps - half, seed, args.nproc, init_from=runs / "stage1")
            train(stage2, runs / "all_at_once", args.steps, seed, args.nproc)
            scores = {
                f"{arm}/{modality[name]}": value
                for arm in ARMS
                for name, value in exact_match(stage2, runs / arm).items()
            }
            print(
                f"seed {seed}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
                + f"  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            return scores

        results = over_seeds(seeds, args.jobs, run_seed)

    summary: dict = {"bench": "curriculum", "steps": args.steps, "scale": args.scale, "seeds": seeds}
    print(f"\nheld-out exact match, {args.steps} steps in all, seeds {args.seeds}:")
    for arm in ARMS:
        per_modality = {m: summarise({seed: r[f"{arm}/{m}"] for seed, r in results.items()}) for m in modality.values()}
        overall = summarise(
            {seed: statistics.mean(r[f"{arm}/{m}"] for m in modality.values()) for seed, r in results.items()}
        )
        print(
            f"  {arm:12}  mean {overall['mean']:.3f}  std {overall['std']:.3f}  "
            + "  ".join(f"{m} {s['mean']:.3f}±{s['std']:.3f}" for m, s in per_modality.items())
        )
        summary |= {
            f"{arm}_mean": overall["mean"],
            f"{arm}_std": overall["std"],
            arm: overall["per_seed"],
            f"{arm}_per_modality": {m: s["mean"] for m, s in per_modality.items()},
            f"{arm}_per_modality_seeds": {m: s["per_seed"] for m, s in per_modality.items()},
        }
    summary["wall_s"] = round(time.perf_counter() - started)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
