"""Shared machinery of the claim studies (bench/multitask.py, bench/curriculum.py).

A study trains small `unimodal` runs from recipes it writes into a demo
workspace (bench/workspace.py), scores each run with `unimodal eval`, repeats
that over seeds in parallel jobs, and summarises each arm as mean, standard
deviation and per-seed values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml
from workspace import REPO, demo_workspace, unimodal

SMOKE = REPO / "recipes" / "smoke"


def study_arguments(doc: str, steps: int, steps_help: str, scale_help: str) -> argparse.ArgumentParser:
    """The options every claim study takes: seeds, steps, data scale or workspace, ranks, parallel jobs."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--scale", type=float, default=0.1, help=scale_help)
    p.add_argument(
        "--data", type=Path, help="a workspace holding data/demo and runs/demo/tokenizer (default: a new one)"
    )
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="seeds trained at once (each seed's arms in turn)")
    return p


@contextmanager
def study_workspace(existing: Path | None, scale: float) -> Iterator[Path]:
    """Inside: the working directory holds data/demo and runs/demo/tokenizer (`existing`, or a fresh demo
    workspace at `scale`); yields a scratch folder for the study's recipes, data variants and runs."""
    with TemporaryDirectory() as scratch:
        if existing is None:
            with demo_workspace(scale=scale, vocab_size=256):
                yield Path(scratch)
            return
        cwd = os.getcwd()
        os.chdir(existing)
        try:
            yield Path(scratch)
        finally:
            os.chdir(cwd)


def smoke_recipe(stage: str) -> dict:
    """A smoke stage's recipe (stage1 or stage2) as a dict, from scratch, to be varied and written back."""
    recipe = yaml.safe_load((SMOKE / f"{stage}.yaml").read_text())
    recipe.pop("init_from", None)  # the study says where a stage starts from (train's init_from)
    return recipe


def write_recipe(recipe: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train(recipe: Path, out: Path, steps: int, seed: int, nproc: int, init_from: Path | None = None) -> None:
    """`steps` optimiser steps of `recipe` into `out`, one checkpoint at the end, no loggers."""
    sets = [
        f"seed={seed}",
        *([f"init_from={init_from}"] if init_from else []),
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        f"train.output_dir={out}",
        "logging.wandb.mode=disabled",
    ]
    unimodal("train", str(recipe), "--nproc", str(nproc), *(a for s in sets for a in ("--set", s)))


def exact_match(recipe: Path, out: Path) -> dict[str, float]:
    """Held-out exact match of the run in `out`, per dataset of `recipe`."""
    unimodal("eval", str(recipe), "--checkpoint", str(out), "--json", str(out / "eval.json"))
    return {name: r["metrics"]["exact_match"] for name, r in json.loads((out / "eval.json").read_text()).items()}


def last_record(out: Path) -> dict:
    """The last training record of the run in `out` (metrics.jsonl; eval lines have no `step`)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "step" in r and "loss" in r][-1]


def over_seeds(seeds: list[int], jobs: int, run_seed: Callable[[int], dict[str, float]]) -> dict[int, dict[str, float]]:
    """run_seed(seed) -> {arm: value} for every seed, `jobs` seeds at a time."""
    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(seeds, pool.map(run_seed, seeds)))  # re-raises a failed run's error


def summarise(values: dict[int, float]) -> dict:
    """Mean, standard deviation (0 for one seed) and per-seed values of one arm."""
    xs = list(values.values())
    return {
        "mean": statistics.mean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "per_seed": {str(s): v for s, v in values.items()},
    }
