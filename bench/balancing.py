"""Does task balancing help the smallest task? A study on the demo data.

Stage 1 of the smoke curriculum (image and text tasks) is trained once; from
its weights, stage 2 (image, text, audio and video tasks) is trained under
each sampling strategy with the same steps, and each (strategy, seed) pair is
run with every seed given. The video task is cut to one shard, so it is the
smallest dataset (index.json sizes) and the hardest. Reported: every task's
held-out exact match, the smallest task's per strategy.

    python bench/balancing.py [--steps 300] [--seeds 0,1] [--scale 0.5]

Strategies (recipe `data.sampling`):
  proportional  temperature 1: p_i proportional to dataset size
  temperature   temperature 5: p_i proportional to n_i^(1/5), closer to uniform
  loss_aware    starting at proportional, every 50 steps the tasks whose loss fell least get more

Last line: JSON with the smallest task's accuracy per strategy and seed.
"""

from __future__ import annotations

import argparse
import json
import time

from workspace import REPO, demo_workspace, unimodal

STRATEGIES = {
    "proportional": ["data.sampling.strategy=temperature", "data.sampling.temperature=1"],
    "temperature": ["data.sampling.strategy=temperature", "data.sampling.temperature=5"],
    "loss_aware": ["data.sampling.strategy=loss_aware", "data.sampling.temperature=1", "data.sampling.update_every=50"],
}
SMALLEST = "moving-digits"
VIDEO = 3  # its index in recipes/smoke/stage2.yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="stage 2 steps per run")
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--scale", type=float, default=0.5, help="demo data size")
    p.add_argument("--nproc", type=int, default=1)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    smoke = REPO / "recipes" / "smoke"
    common = ["--nproc", str(args.nproc), "--set", "logging.wandb.mode=disabled", "--set", "data.workers=1"]

    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in STRATEGIES}
    started = time.perf_counter()
    with demo_workspace(scale=args.scale) as ws:
        unimodal(
            "train",
            str(smoke / "stage1.yaml"),
            *common,
            "--set",
            f"train.steps={args.stage1_steps}",
            "--set",
            f"train.checkpoint_every={args.stage1_steps}",
        )
        print(f"stage 1: {args.stage1_steps} steps ({time.perf_counter() - started:.0f} s)", flush=True)
        for name, sampling in STRATEGIES.items():
            for seed in seeds:
                out = ws / "runs" / f"{name}-{seed}"
                sets = [
                    f"seed={seed}",
                    f"init_from={ws / 'runs' / 'demo' / 'stage1'}",
                    f"train.steps={args.steps}",
                    f"train.checkpoint_every={args.steps}",
                    f"train.output_dir={out}",
                    f"data.datasets.{VIDEO}.shards=data/demo/train/video-000000.tar",
                    *sampling,
                ]
                flags = [a for s in sets for a in ("--set", s)]
                unimodal("train", str(smoke / "stage2.yaml"), *common, *flags)
                unimodal(
                    "eval",
                    str(smoke / "stage2.yaml"),
                    "--checkpoint",
                    str(out),
                    "--json",
                    str(out / "eval.json"),
                    *flags,
                )
                scores = {
                    d: r["metrics"]["exact_match"] for d, r in json.loads((out / "eval.json").read_text()).items()
                }
                results[name][seed] = scores
                print(
                    f"{name:13} seed {seed}: "
                    + "  ".join(f"{d} {a:.3f}" for d, a in scores.items())
                    + f"  ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )

    print(f"\n{SMALLEST} (smallest task) held-out exact match, {args.steps} stage-2 steps:")
    for name, by_seed in results.items():
        accs = [by_seed[s][SMALLEST] for s in seeds]
        print(
            f"  {name:13} "
            + "  ".join(f"seed {s}: {a:.3f}" for s, a in zip(seeds, accs))
            + f"  mean {sum(accs) / len(accs):.3f}"
        )
    print(
        json.dumps(
            {
                "bench": "balancing",
                "smallest": SMALLEST,
                "steps": args.steps,
                "scale": args.scale,
                "smallest_accuracy": {n: {str(s): r[s][SMALLEST] for s in seeds} for n, r in results.items()},
                "all": {n: {str(s): r[s] for s in seeds} for n, r in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
