"""Does a small task borrow from large ones? MultiModel's claim, on the demo data.

The demo's four tasks (recipes/smoke/stage2.yaml, every task weight 1: equally
often, as MultiModel samples its tasks), with the image captions cut to a
tenth: the small task reads a second demo written at a tenth of the scale
(`write_demo` at scale/10 into a scratch folder: its image shards), the others read
data/demo. The small task's held-out exact match (data/demo's full test
shard) is compared, with every seed:

  joint                 all four tasks, --steps steps
  single                the small task alone, the same --steps steps
  single_same_samples   the small task alone for as many of its samples as the joint run saw
                        (about a quarter: its share of the mixture), so fewer steps

    python bench/multitask.py [--seeds 0,1,2] [--jobs 2] [--steps 200] [--scale 0.1]

Last line: JSON with `joint_mean`, `single_mean`, `single_same_samples_mean`
(and `_std`), `seeds`, and the per-seed values of each arm.
"""

from __future__ import annotations

import json
import time

from study import (
    exact_match,
    last_record,
    over_seeds,
    smoke_recipe,
    study_arguments,
    study_workspace,
    summarise,
    train,
    write_recipe,
)

from unimodal.demo.mixture import write_demo

SMALL = "digit-captions"
ARMS = ("joint", "single", "single_same_samples")


def main() -> None:
    args = study_arguments(
        __doc__,
        200,
        "optimiser steps of the joint and single runs",
        "demo scale of the large tasks (the small: a tenth)",
    ).parse_args()
    seeds = args.seeds
    started = time.perf_counter()
    with study_workspace(args.data, args.scale) as scratch:
        n_small = write_demo(scratch / "small", scale=args.scale / 10, speech=False)["train"]["image"]
        joint = smoke_recipe("stage2")
        for dataset in joint["data"]["datasets"]:
            dataset["weight"] = 1.0
            if dataset["name"] == SMALL:
                dataset["shards"] = dataset["shards"].replace("data/demo", str(scratch / "small"))
        single = dict(
            joint, data=dict(joint["data"], datasets=[d for d in joint["data"]["datasets"] if d["name"] == SMALL])
        )
        recipes = {
            "joint": write_recipe(joint, scratch / "recipes" / "joint.yaml"),
            "single": write_recipe(single, scratch / "recipes" / "single.yaml"),
        }
        print(f"small task {SMALL}: {n_small} training samples", flush=True)

        def seen(out) -> float:  # the small task's training samples seen by the end of the run in `out`
            return last_record(out)[f"epochs/{SMALL}"] * n_small

        def run_seed(seed: int) -> dict[str, float]:
            runs, scores, samples = scratch / "runs" / f"seed{seed}", {}, {}
            for arm in ("joint", "single"):
                train(recipes[arm], runs / arm, args.steps, seed, args.nproc)
                samples[arm] = seen(runs / arm)
            same = max(1, round(args.steps * samples["joint"] / samples["single"]))
            train(recipes["single"], runs / "single_same_samples", same, seed, args.nproc)
            samples["single_same_samples"] = seen(runs / "single_same_samples")
            for arm in ARMS:  # the small task's recipe scores every arm: its held-out shard only
                scores[arm] = exact_match(recipes["single"], runs / arm)[SMALL]
                scores[f"{arm}_samples"] = samples[arm]
            scores["single_same_samples_steps"] = same
            print(
                f"seed {seed}  "
                + "  ".join(f"{a} {scores[a]:.3f} ({samples[a]:.0f} samples)" for a in ARMS)
                + f"  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            return scores

        results = over_seeds(seeds, args.jobs, run_seed)

    summary: dict = {
        "bench": "multitask",
        "small_task": SMALL,
        "small_train_samples": n_small,
        "steps": args.steps,
        "scale": args.scale,
        "seeds": seeds,
    }
    print(f"\n{SMALL} held-out exact match, {n_small} training samples, seeds {','.join(map(str, seeds))}:")
    for arm in ARMS:
        s = summarise({seed: r[arm] for seed, r in results.items()})
        print(
            f"  {arm:20}  mean {s['mean']:.3f}  std {s['std']:.3f}  "
            + "  ".join(f"{v:.3f}" for v in s["per_seed"].values())
        )
        summary |= {
            f"{arm}_mean": s["mean"],
            f"{arm}_std": s["std"],
            arm: s["per_seed"],
            f"{arm}_samples": {str(k): r[f"{arm}_samples"] for k, r in results.items()},
        }
    summary["single_same_samples_steps"] = {str(k): r["single_same_samples_steps"] for k, r in results.items()}
    summary["joint_beats_single_seeds"] = sum(r["joint"] > r["single"] for r in results.values())
    summary["wall_s"] = round(time.perf_counter() - started)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
