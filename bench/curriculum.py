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

import json
import statistics
import time

import study

ARMS = ("curriculum", "all_at_once")


def main() -> None:
    args = study.study_arguments(__doc__, 300, "optimiser steps in all, of either arm", "demo scale").parse_args()
    seeds = args.seeds
    started = time.perf_counter()
    with study.study_workspace(args.data, args.scale) as scratch:
        stage1 = study.write_recipe(study.smoke_recipe("stage1"), scratch / "recipes" / "stage1.yaml")
        everything = study.smoke_recipe("stage2")
        stage2 = study.write_recipe(everything, scratch / "recipes" / "stage2.yaml")
        modality = {d["name"]: next(iter(d["inputs"])) for d in everything["data"]["datasets"]}

        def run_seed(seed: int) -> dict[str, float]:
            runs, half = scratch / "runs" / f"seed{seed}", args.steps // 2
            study.train(stage1, runs / "stage1", half, seed, args.nproc)
            study.train(stage2, runs / "curriculum", args.steps - half, seed, args.nproc, init_from=runs / "stage1")
            study.train(stage2, runs / "all_at_once", args.steps, seed, args.nproc)
            scores = {
                f"{arm}/{modality[name]}": value
                for arm in ARMS
                for name, value in study.exact_match(stage2, runs / arm).items()
            }
            print(
                f"seed {seed}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
                + f"  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            return scores

        results = study.over_seeds(seeds, args.jobs, run_seed)

    summary: dict = {"bench": "curriculum", "steps": args.steps, "scale": args.scale, "seeds": seeds}
    print(f"\nheld-out exact match, {args.steps} steps in all, seeds {','.join(map(str, seeds))}:")
    for arm in ARMS:
        per_modality = {
            m: study.summarise({seed: r[f"{arm}/{m}"] for seed, r in results.items()}) for m in modality.values()
        }
        overall = study.summarise(
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
