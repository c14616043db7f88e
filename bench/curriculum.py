"""Is a curriculum better than everything at once? UnIVAL's and MoMo's claim, on the demo data.

The smoke curriculum (recipes/smoke: stage 1 image + text, then stage 2 all
four modalities from stage 1's weights) against stage 2's recipe alone from
scratch, at the same total number of optimiser steps, with every seed:

  curriculum    stage1.yaml for --steps/2 steps, then stage2.yaml for the rest, from its weights
  all_at_once   stage2.yaml from scratch for --steps steps
  same_mix      the control: stage2.yaml from scratch for --steps steps, its dataset weights set to
                the share of steps the curriculum gives each dataset over both stages (stage 1's
                share x its steps + stage 2's share x its steps), so that only the order differs

Each is scored on the held-out shard of every modality (exact match, stage 2's
datasets). Curriculum stages keep their own warmup and decay, as
`unimodal curriculum` runs them. The claim holds if the curriculum beats
same_mix; beating all_at_once alone may be its data mix.

    python bench/curriculum.py [--seeds 0,1,2] [--jobs 2] [--steps 300] [--scale 0.1]

Last line: JSON with `curriculum_mean`, `all_at_once_mean` and `same_mix_mean`
(over modalities and seeds), `same_mix_weights`, their spreads over seeds, `seeds`, and per-modality means and
per-seed values.
"""

from __future__ import annotations

import json
import statistics
import time

import study

ARMS = ("curriculum", "all_at_once", "same_mix")


def shares(recipe: dict) -> dict[str, float]:
    """Each dataset's share of a stage's samples: its weight over the stage's weights (the smoke recipes'
    `weights` strategy; a stage sampled by size at a temperature is not what this study reads)."""
    if recipe["data"].get("sampling", {}).get("temperature") is not None:
        raise SystemExit("bench/curriculum.py: the stages must mix by weight, not data.sampling.temperature")
    weights = {d["name"]: float(d.get("weight", 1.0)) for d in recipe["data"]["datasets"]}
    return {name: w / sum(weights.values()) for name, w in weights.items()}


def curriculum_mix(first: dict, second: dict, first_steps: int, second_steps: int) -> dict[str, float]:
    """The share of the curriculum's steps each of the second stage's datasets gets, over both stages."""
    one, two = shares(first), shares(second)
    steps = {name: one.get(name, 0.0) * first_steps + share * second_steps for name, share in two.items()}
    return {name: s / sum(steps.values()) for name, s in steps.items()}


def main() -> None:
    args = study.study_arguments(__doc__, 300, "optimiser steps in all, of either arm", "demo scale").parse_args()
    seeds = args.seeds
    started = time.perf_counter()
    with study.study_workspace(args.data, args.scale) as scratch:
        first = study.smoke_recipe("stage1")
        stage1 = study.write_recipe(first, scratch / "recipes" / "stage1.yaml")
        everything = study.smoke_recipe("stage2")
        stage2 = study.write_recipe(everything, scratch / "recipes" / "stage2.yaml")
        modality = {d["name"]: next(iter(d["inputs"])) for d in everything["data"]["datasets"]}
        mix = curriculum_mix(first, everything, args.steps // 2, args.steps - args.steps // 2)
        matched = {**everything, "data": {**everything["data"], "datasets": []}}
        for dataset in everything["data"]["datasets"]:
            matched["data"]["datasets"].append({**dataset, "weight": round(mix[dataset["name"]], 6)})
        same_mix = study.write_recipe(matched, scratch / "recipes" / "same_mix.yaml")
        print("same_mix weights: " + ", ".join(f"{name} {w:.3f}" for name, w in mix.items()), flush=True)

        def run_seed(seed: int) -> dict[str, float]:
            runs, half = scratch / "runs" / f"seed{seed}", args.steps // 2
            study.train(stage1, runs / "stage1", half, seed, args.nproc)
            study.train(stage2, runs / "curriculum", args.steps - half, seed, args.nproc, init_from=runs / "stage1")
            study.train(stage2, runs / "all_at_once", args.steps, seed, args.nproc)
            study.train(same_mix, runs / "same_mix", args.steps, seed, args.nproc)
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
    summary["same_mix_weights"] = mix
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
