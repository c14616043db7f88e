"""Contrastive adaptation against full fine-tuning, on a shifted version of the demo's digits.

A contrastive model (image-caption pairs, InfoNCE) is pretrained on the demo's
clean digit scans (recipes/adapt/pretrain.yaml). The domain then shifts: the
same kind of scans inverted and covered in pixel noise (`unimodal data
shifted`). From the pretrained weights, on the shifted pairs, with the same
steps:

  frozen         the pretrained model as it is
  adapted        recipes/adapt/adapt.yaml: everything frozen but a residual MLP per view
  full finetune  recipes/adapt/full_finetune.yaml: every parameter trains

each scored by `unimodal eval` on the held-out shifted scans (recall@1, both
directions averaged). Time: the training loop's seconds (done.json) and the
whole `unimodal train` command's. Memory: done.json's peak of the rank
process (resident set size on CPU, allocated memory on a GPU).

    python bench/adapt.py [--steps 150] [--pretrain-steps 300] [--scale 1.0] [--nproc 1]

Last line: JSON with frozen_metric, adapted_metric, full_finetune_metric,
trainable_fraction, and the time and peak memory of both trainings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from workspace import REPO, demo_workspace, unimodal

ADAPT = REPO / "recipes" / "adapt"
METRIC = "recall@1"
TRAININGS = {"adapted": "adapt.yaml", "full_finetune": "full_finetune.yaml"}


def train(ws: Path, recipe: str, steps: int, out: str, common: list[str]) -> tuple[dict, float]:
    """One `unimodal train` of `steps` into `out`: its done.json and the command's wall seconds."""
    sets = [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.output_dir={out}"]
    started = time.perf_counter()
    unimodal("train", str(ADAPT / recipe), *common, *[a for s in sets for a in ("--set", s)])
    return json.loads((ws / out / "done.json").read_text()), time.perf_counter() - started


def score(ws: Path, recipe: str, checkpoint: str) -> float:
    """`unimodal eval` of the weights in `checkpoint` on the recipe's one dataset: its METRIC."""
    unimodal("eval", str(ADAPT / recipe), "--checkpoint", checkpoint, "--json", f"{checkpoint}/eval-{recipe}.json")
    (result,) = json.loads((ws / checkpoint / f"eval-{recipe}.json").read_text()).values()
    return result["metrics"][METRIC]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150, help="steps of adaptation and of full fine-tuning")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--scale", type=float, default=1.0, help="demo data size (1.0: all 1,797 scans)")
    p.add_argument("--nproc", type=int, default=1)
    args = p.parse_args()
    common = ["--nproc", str(args.nproc), "--set", "logging.wandb.mode=disabled"]
    pretrained = "runs/adapt/pretrain"

    with demo_workspace(scale=args.scale) as ws:
        unimodal("data", "shifted", "data/demo-shifted", "--scale", str(args.scale))
        _, seconds = train(ws, "pretrain.yaml", args.pretrain_steps, pretrained, common)
        clean, frozen = score(ws, "pretrain.yaml", pretrained), score(ws, "adapt.yaml", pretrained)
        print(
            f"pretrained {args.pretrain_steps} steps ({seconds:.0f} s): {METRIC} {clean:.3f} clean, {frozen:.3f} shifted",
            flush=True,
        )
        runs = {}
        for name, recipe in TRAININGS.items():
            out = f"runs/adapt/{name}"
            done, command_seconds = train(ws, recipe, args.steps, out, [*common, "--set", f"init_from={pretrained}"])
            runs[name] = {**done, "command_seconds": command_seconds, "metric": score(ws, recipe, out)}
            print(f"{name}: {METRIC} {runs[name]['metric']:.3f} ({command_seconds:.0f} s)", flush=True)

    rows = [("run", "trainable", "fraction", "loop s", "command s", "peak MiB", f"{METRIC} shifted")]
    rows.append(("frozen", "0", "0", "-", "-", "-", f"{frozen:.3f}"))
    for name, r in runs.items():
        rows.append(
            (
                name,
                f"{r['trainable_parameters']:,}",
                f"{r['trainable_parameters'] / r['parameters']:.2%}",
                f"{r['seconds']:.1f}",
                f"{r['command_seconds']:.1f}",
                f"{r['peak_memory_mib']:.0f}",
                f"{r['metric']:.3f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(
        f"\n{args.steps} steps from the pretrained model ({METRIC} on the clean test scans: {clean:.3f}); "
        f"peak memory: {runs['adapted']['peak_memory_of']}"
    )
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    adapted, full = runs["adapted"], runs["full_finetune"]
    print(
        json.dumps(
            {
                "bench": "adapt",
                "metric": METRIC,
                "steps": args.steps,
                "pretrain_steps": args.pretrain_steps,
                "scale": args.scale,
                "nproc": args.nproc,
                "clean_metric": clean,
                "frozen_metric": frozen,
                "adapted_metric": adapted["metric"],
                "full_finetune_metric": full["metric"],
                "parameters": adapted["parameters"],
                "trainable_parameters": adapted["trainable_parameters"],
                "trainable_fraction": adapted["trainable_parameters"] / adapted["parameters"],
                "adapt_seconds": adapted["seconds"],
                "full_finetune_seconds": full["seconds"],
                "adapt_command_seconds": adapted["command_seconds"],
                "full_finetune_command_seconds": full["command_seconds"],
                "adapt_peak_memory_mib": adapted["peak_memory_mib"],
                "full_finetune_peak_memory_mib": full["peak_memory_mib"],
                "peak_memory_of": adapted["peak_memory_of"],
            }
        )
    )


if __name__ == "__main__":
    main()
