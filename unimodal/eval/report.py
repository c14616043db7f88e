"""Evaluation results out: a table for the terminal, and a record on the run's dashboard.

The record goes where training's numbers went (unimodal/train/metrics.py): a
line appended to the stage's `metrics.jsonl`, at the step of the weights, and
the same keys in the summary of the stage's wandb run (resumed by its id), so
the held-out scores sit beside the loss curves. Keys read
`eval/<dataset>/<metric>`, or `eval-without-<modality>/...` for a
missing-modality evaluation, so the two never overwrite each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

import wandb

from unimodal.config import Recipe
from unimodal.train.metrics import wandb_mode


def format_table(results: dict[str, dict]) -> str:
    """One row per dataset and metric; a `dropped` column when some input was left out."""
    header = ("dataset", "modality", "task", "metric", "value", "samples")
    dropped = any(r["dropped"] for r in results.values())
    rows = [header + ("dropped",) * dropped]
    for name, r in results.items():
        for metric, value in r["metrics"].items():
            cells = (
                name,
                r["modality"],
                r["task"],
                metric,
                f"{value:.2f}" if metric == "bleu" else f"{value:.3f}",
                str(r["samples"]),
            )
            rows.append(cells + (",".join(r["dropped"]) or "-",) * dropped)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_record(step: int, results: dict[str, dict], drop: Collection[str]) -> dict:
    prefix = "eval" + "".join(f"-without-{m}" for m in sorted(drop))
    return {"step": step} | {f"{prefix}/{name}/{m}": v for name, r in results.items() for m, v in r["metrics"].items()}


def log_to_run(run_dir: Path, recipe: Recipe, results: dict[str, dict], drop: Collection[str] = ()) -> list[str]:
    """Append the eval record to `run_dir`'s metrics.jsonl and wandb run; where it went (none if no run is there)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    record = eval_record(json.loads(lines[-1])["step"] if lines else 0, results, drop)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return [str(path)] + _wandb_summary(Path(run_dir), recipe, record)


def _wandb_summary(run_dir: Path, recipe: Recipe, record: dict) -> list[str]:
    """The record's keys into the summary of the stage's newest wandb run (`run-<time>-<id>` or `offline-run-...`)."""
    cfg = recipe.logging.wandb
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    if cfg.mode == "disabled" or not runs:
        return []
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=recipe.name,
        id=runs[-1].name.rsplit("-", 1)[1],
        resume="allow",
        mode=wandb_mode(cfg.mode),
        dir=str(run_dir),
    )
    run.summary.update({k: v for k, v in record.items() if k != "step"})
    run.finish()
    return [f"wandb run {run.id} ({run.settings.mode})"]
