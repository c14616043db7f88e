"""Where training numbers go: wandb, TensorBoard if asked, `metrics.jsonl`, and progress (rank 0 only).

Training records carry `loss`; validation records (`val/<dataset>/...`,
unimodal/train/validate.py) share the step of a training record and go to the
same places, and to one line of progress each.

Progress follows the usual convention: a live bar when stderr is a terminal,
and where it is not (a log file: CI, SLURM's slurm-*.out) one plain line per
record, so a log holds no carriage-return updates.

wandb is the dashboard (offline unless the user has an API key); TensorBoard
(`logging.tensorboard`) serves those who run their own; the JSON lines file
holds the same records for scripts, tests and `unimodal report`. On resume,
records after the resumed step are dropped (purged, in TensorBoard) so each
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import wandb
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from unimodal.config import Recipe


def wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class MetricsLogger:
    def __init__(self, recipe: Recipe, resumed_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        out = recipe.train.output_dir
        self.path = out / "metrics.jsonl"
        kept = [r for r in _read_jsonl(self.path) if r["step"] <= resumed_step] if resumed_step else []
        self.file = self.path.open("w")
        for record in kept:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=recipe.logging.wandb.project,
            entity=recipe.logging.wandb.entity,
            name=recipe.name,
            mode=wandb_mode(recipe.logging.wandb.mode),
            dir=str(out),
            config=recipe.model_dump(mode="json"),
        )
        self.tensorboard = None
        if recipe.logging.tensorboard:
            self.tensorboard = SummaryWriter(
                str(out / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None
            )
        self.name, self.steps = recipe.name, recipe.train.steps
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=self.steps, initial=resumed_step, desc=self.name, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.run.log(record, step=record["step"])
        if self.tensorboard:
            for key, value in record.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
            self.tensorboard.flush()
        if "loss" not in record:  # a validation record (unimodal/train/validate.py): one line, above a live bar
            values = ", ".join(f"{k} {v:.3f}" for k, v in record.items() if k != "step")
            tqdm.write(f"{self.name}: step {record['step']}, {values}", file=sys.stderr)
        elif self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        else:
            print(
                f"{self.name}: step {record['step']}/{self.steps}, loss {record['loss']:.3f}, "
                f"{record['tokens_per_s']:.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )

    def advance(self) -> None:
        if self.enabled and self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.file.close()
            self.run.finish()
            if self.tensorboard:
                self.tensorboard.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
