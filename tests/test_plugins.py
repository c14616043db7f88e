"""A modality and an objective of a user's own, defined entirely in this file, trained and evaluated.

The toy modality, `heightmap`, is a 2-D float map read from `.npy` members
(numpy.load with allow_pickle=False), cut into square tiles; the toy
objective, `level`, regresses a map's mean height from the pooled encoder
state, with its own head, loss, FLOPs, metric and held-out score. Both go
through the registries' public API (register_modality, register_objective),
and a recipe names this module in `plugins`, so every process of the run
imports it: the CLI, the rank, its loader worker, the evaluator. Nothing in
unimodal/ names either.

This module registers them only in the processes of that run (the variable
below is set in their environment alone): the pytest process, which imports
it too, keeps the built-ins only, so the models other tests build are unchanged.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from conftest import REPO, unimodal
from pydantic import Field
from torch import nn

from unimodal.modalities import Modality, Settings, register_modality
from unimodal.objectives import Objective, objective_code, register_objective
from unimodal.objectives.reading import pool_views

MODALITY, OBJECTIVE = "heightmap", "level"
REGISTER = "UNIMODAL_TEST_PLUGIN"  # names this module in the environment of the run's processes


class HeightmapTokens(Settings):
    tile: int = Field(4, gt=0)  # side of a square tile: one token


def decode_heightmap(data: bytes, path: list[str], cfg: HeightmapTokens) -> np.ndarray:
    height = np.load(io.BytesIO(data), allow_pickle=False)
    if height.ndim != 2 or height.dtype.kind != "f":
        raise ValueError(f"a heightmap is a 2-D float array, got {height.dtype} {height.shape}")
    return height.astype(np.float32)


class TilePatcher:
    def __init__(self, cfg: HeightmapTokens):
        self.tile = cfg.tile
        self.dim = cfg.tile * cfg.tile

    def __call__(self, height: np.ndarray) -> torch.Tensor:
        t = self.tile
        rows, cols = height.shape[0] // t, height.shape[1] // t
        tiles = height[: rows * t, : cols * t].reshape(rows, t, cols, t).transpose(0, 2, 1, 3)
        return torch.from_numpy(np.ascontiguousarray(tiles).reshape(rows * cols, self.dim))


def check(ds) -> None:
    if MODALITY not in ds.inputs:
        raise ValueError(f"inputs: objective {OBJECTIVE} needs a {MODALITY} input")


def lay_out(prompt, inputs, mask_ratio, seed):
    return [prompt, *inputs]


def items(model, batch):
    return (batch["objective"] == objective_code(OBJECTIVE)).nonzero().squeeze(1)


def mean_heights(model, batch) -> torch.Tensor:
    """Each sample's mean height [N] (0 for samples without a heightmap)."""
    at = batch["modality"] == model.modalities.index(MODALITY)
    n = batch["dataset"].shape[0]
    values = batch[f"patches_{MODALITY}"].float().mean(-1)
    sums = torch.zeros(n).index_add_(0, batch["enc_sample"][at], values)
    return sums / torch.zeros(n).index_add_(0, batch["enc_sample"][at], torch.ones_like(values)).clamp(min=1)


def predictions(model, batch, memory) -> torch.Tensor:
    return getattr(model, OBJECTIVE)(pool_views(memory, batch)[0][:, 0]).float().squeeze(-1)


def loss(model, batch, mine, memory, terms) -> None:
    target = mean_heights(model, batch)
    terms.add(F.mse_loss(predictions(model, batch, memory)[mine], target[mine], reduction="none"), mine)


def flops(cfg, batch, views, modalities) -> int:
    return 2 * cfg.d_model * int((batch["objective"].numpy() == objective_code(OBJECTIVE)).sum())


def predict(model, batch, refs, tokenizer, max_new_tokens) -> torch.Tensor:
    memory, _ = model.encode(batch)
    return (predictions(model, batch, memory) - mean_heights(model, batch)).abs().cpu()


def measure(errors, ds) -> dict[str, float]:
    return {"mean_abs_error": torch.cat(errors).mean().item()}


if os.environ.get(REGISTER) == __name__:
    register_modality(
        Modality(MODALITY, ("npy",), decode_heightmap, HeightmapTokens, TilePatcher, patch_dtype=torch.float32)
    )
    register_objective(
        Objective(
            OBJECTIVE,
            lay_out,
            check=check,
            metrics=("mean_abs_error",),
            default_metric="mean_abs_error",
            heads={OBJECTIVE: lambda cfg: nn.Linear(cfg.d_model, 1)},
            items=items,
            loss=loss,
            flops=flops,
            predict=predict,
            measure=measure,
        )
    )


def write_maps(path: Path, n: int, seed: int) -> None:
    """Shards of 8 x 8 heightmaps, each with a caption of its level ("low" or "high")."""
    rng = np.random.default_rng(seed)
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            high = bool(i % 2)
            height = (0.7 if high else 0.2) + 0.05 * rng.standard_normal((8, 8))
            buf = io.BytesIO()
            np.save(buf, height.astype(np.float32), allow_pickle=False)
            sink.write({"__key__": f"map{seed}-{i:04d}", "npy": buf.getvalue(), "txt": "high" if high else "low"})


def test_a_modality_and_an_objective_of_ones_own_train_and_evaluate(workspace, tmp_path, monkeypatch):
    for shard, n, seed in (("train-0.tar", 24, 0), ("train-1.tar", 24, 1), ("test.tar", 16, 2)):
        write_maps(tmp_path / shard, n, seed)
    maps = {"shards": f"{tmp_path}/train-{{0..1}}.tar", "eval_shards": str(tmp_path / "test.tar")}
    recipe = {
        "name": "plugins",
        "plugins": [Path(__file__).stem],
        "model": {"preset": "tiny"},
        "tokenizer": {"text": "runs/demo/tokenizer/sp.model", MODALITY: {"tile": 4}},
        "data": {
            "batch_tokens": 512,
            "workers": 1,
            "datasets": [
                {"name": "levels", "task": "level", "objective": OBJECTIVE, "inputs": {MODALITY: "npy"}, **maps},
                {"name": "captions", "task": "caption", "inputs": {MODALITY: "npy"}, "target": "txt", **maps},
            ],
        },
        "train": {"steps": 2, "checkpoint_every": 2, "output_dir": str(tmp_path / "run")},
        "logging": {"every": 1, "wandb": {"mode": "disabled"}},
    }
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    # this module importable by name in every process of the run, and registering there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(REGISTER, Path(__file__).stem)

    trained = unimodal("train", str(tmp_path / "recipe.yaml"), "--nproc", "1", cwd=workspace)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss/levels"] > 0 and r["loss/captions"] > 0 and r["tflops_per_s"] > 0 for r in records)

    scored = unimodal(
        "eval", str(tmp_path / "recipe.yaml"), "--checkpoint", str(tmp_path / "run"), "--json",
        str(tmp_path / "eval.json"), cwd=workspace,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["levels"]["modality"] == MODALITY and results["levels"]["samples"] == 16
    assert 0 <= results["levels"]["metrics"]["mean_abs_error"] < 10
    assert 0 <= results["captions"]["metrics"]["exact_match"] <= 1

    # no file of the package names either
    named = [
        p for p in (REPO / "unimodal").rglob("*.py") if MODALITY in p.read_text() or "mean_abs_error" in p.read_text()
    ]
    assert not named, named
