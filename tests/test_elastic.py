"""A run resumes on another world size or ZeRO stage (unimodal/train/elastic.py).

The 2-rank ZeRO-2 run of `tiny_run` (TINY_STEPS steps), copied, goes on for 2
steps more on 1 rank: its checkpoint converted once to DeepSpeed's universal
format beside the original, the global batch kept (accumulation 1 -> 2), Adam's
step count going on from TINY_STEPS, the loss where training had brought it. What cannot be honoured is
refused before any rank starts, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE, TINY_STEPS, unimodal, unimodal_env
from test_loader import image_recipe, write_shards
from test_resume import wait_for

from unimodal.config import RecipeError
from unimodal.data.ledger import SampleLedger
from unimodal.data.loader import build_train_loader
from unimodal.recipe import load_recipe
from unimodal.train import launch
from unimodal.train.checkpoint import PARTIAL, TOPOLOGY, tag, weights_only_loads
from unimodal.train.elastic import UNIVERSAL, plan, topology
from unimodal.train.lock import LOCK
from unimodal.train.state import Checkpointer

SETS = ["train.checkpoint_every=2", "logging.every=1", "data.workers=0", "logging.wandb.mode=disabled"]


def train_args(out: Path, nproc: int, *extra: str) -> list[str]:
    sets = [*SETS, f"train.output_dir={out}", *extra]
    return ["train", str(SMOKE / "stage1.yaml"), "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)]]


def adam_steps(ckpt: Path) -> set[float]:
    """The step counts in a ZeRO-2 checkpoint's optimiser state, over every rank's partition and group."""
    with weights_only_loads():
        states = [torch.load(f, map_location="cpu") for f in ckpt.glob("*_optim_states.pt")]
    return {
        float(s["step"]) for sd in states for s in sd["optimizer_state_dict"]["base_optimizer_state"]["state"].values()
    }


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_a_2_rank_run_goes_on_on_1_rank_with_its_optimiser_state_and_global_batch(tiny_run, workspace):
    out = workspace / "runs" / "elastic"
    shutil.copytree(tiny_run, out)
    last, more = TINY_STEPS, TINY_STEPS + 2
    original = digest(out / "checkpoints" / tag(last))
    assert adam_steps(out / "checkpoints" / tag(last)) == {float(last)}

    result = unimodal(*train_args(out, 1, f"train.steps={more}"), cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming at step {last}" in result.stdout
    assert "gradient accumulation 1 -> 2, global batch 2048 x 1 x 2 -> 2048 x 2 x 1 tokens" in result.stdout

    ckpt = out / "checkpoints"
    assert (ckpt / tag(last) / UNIVERSAL / "zero").is_dir()  # converted once, beside the original
    assert digest(ckpt / tag(last)) == original  # which is left as it was
    assert adam_steps(ckpt / tag(more)) == {float(more)}  # loaded and advanced, not reset (that would be 2)
    saved = json.loads((ckpt / tag(more) / TOPOLOGY).read_text())
    assert (saved["world_size"], saved["accumulation"], saved["asked_accumulation"]) == (1, 2, 1)
    losses = {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    # the weights went on from where training had brought them (a reset model starts at step 1's loss)
    assert max(losses[last + 1], losses[more]) < (losses[1] + losses[last]) / 2, losses
    assert min(losses[last + 1], losses[more]) < 1.05 * losses[last], losses


@pytest.mark.parametrize(
    ("world", "sets", "field"),
    [
        (1, ["deepspeed.zero_optimization.stage=3"], "deepspeed.zero_optimization.stage"),  # 1 <-> 2 only
        (3, [], "deepspeed.gradient_accumulation_steps"),  # 1 x 2 ranks does not split over 3
        (1, ["deepspeed.bf16.enabled=true"], "deepspeed.bf16"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(tiny_run, in_workspace, world, sets, field):
    recipe = load_recipe(SMOKE / "stage1.yaml", [*SETS, f"train.output_dir={tiny_run}", *sets])
    with pytest.raises(RecipeError, match=re.escape(field)):
        plan(recipe, world, tiny_run / "checkpoints", "here")


def test_the_refusal_comes_before_any_rank_starts(tiny_run, in_workspace, monkeypatch):
    monkeypatch.setattr(launch, "run_ranks", lambda *_: pytest.fail("ranks were started"))
    with pytest.raises(RecipeError, match=re.escape("deepspeed.gradient_accumulation_steps")):
        launch.run_stage(
            SMOKE / "stage1.yaml", 3, [*SETS, f"train.output_dir={tiny_run}", f"train.steps={TINY_STEPS + 2}"]
        )
    assert not (tiny_run / LOCK).exists()  # refused before the output directory was claimed


def test_the_global_batch_is_kept_unless_the_recipe_sets_another_accumulation(in_workspace, tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / tag(4)).mkdir(parents=True)
    (ckpt / "latest").write_text(tag(4))
    stage1 = load_recipe(SMOKE / "stage1.yaml", ["deepspeed.zero_optimization.stage=1"])
    (ckpt / tag(4) / TOPOLOGY).write_text(json.dumps(topology(stage1, 4, 1) | {"accumulation": 3}))  # 12 in all
    stage2 = load_recipe(SMOKE / "stage1.yaml")
    assert plan(stage1, 4, ckpt, "here").accumulation == 3 and not plan(stage1, 4, ckpt, "here").universal
    on_6 = plan(stage2, 6, ckpt, "here")  # stage 1 -> 2 as well
    assert (on_6.accumulation, on_6.universal, on_6.reshard) == (2, f"{tag(4)}/{UNIVERSAL}", True)
    assert plan(stage2, 12, ckpt, "here").accumulation == 1
    chosen = load_recipe(SMOKE / "stage1.yaml", ["deepspeed.gradient_accumulation_steps=5"])
    assert plan(chosen, 6, ckpt, "here").accumulation == 5  # asked for: the global batch changes
    with pytest.raises(RecipeError, match=re.escape("deepspeed.gradient_accumulation_steps")):
        plan(stage2, 5, ckpt, "here")


# The data across topology changes: 2 ranks x 2 workers, killed; 1 x 1, killed; 2 x 1 to the end.
EXACT_STEPS = 24
PER_SHARD = {"a": 6, "b": 5}  # 8 shards each: epoch 0 of both ends near step 10, between the second kill and the end


def exact_data(tmp_path: Path) -> tuple[Path, dict[str, set[str]]]:
    """Two image-caption datasets, `resample: false`, 8 shards each: the recipe, and each dataset's keys."""
    keys = {name: set(write_shards(tmp_path / name, name, per_shard=n)) for name, n in PER_SHARD.items()}
    datasets = [
        {"name": name, "shards": str(tmp_path / name / f"{name}-{{000000..000007}}.tar"), "resample": False}
        for name in PER_SHARD
    ]
    return image_recipe(tmp_path, datasets, workers=2, shuffle_buffer=2), keys


def exact_args(recipe: Path, out: Path, nproc: int, *sets: str) -> list[str]:
    sets = (
        f"train.steps={EXACT_STEPS}",
        "logging.every=1",
        "logging.sample_log=true",
        "logging.wandb.mode=disabled",
        f"train.output_dir={out}",
        *sets,
    )
    return ["train", str(recipe), "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)]]


def kill_while_saving(args: list[str], out: Path, cwd: Path, step: int) -> None:
    """Run until the checkpoint of `step` is being written, then SIGKILL the whole job."""
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (the run writes to it after we return)
    cmd = [sys.executable, "-m", "unimodal.cli", *args]
    run = subprocess.Popen(
        cmd, cwd=cwd, env=unimodal_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for(lambda: (out / "checkpoints" / f"{PARTIAL}{tag(step)}").is_dir(), run)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def uninterrupted_draws(recipe: Path, cwd: Path) -> dict[int, list[int]]:
    """The task draws of each global micro-batch of an uninterrupted 2 x 2 run, from its loaders alone."""
    draws = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        recipe = load_recipe(recipe)
        for rank in (0, 1):
            batches = iter(build_train_loader(recipe, rank, world=2))
            for _ in range(EXACT_STEPS):
                meta = next(batches)["meta"]
                draws[meta["micro"]] = meta["draws"]
    return draws


def test_a_run_killed_and_resumed_on_other_topologies_trains_each_sample_of_the_epoch_once(workspace, tmp_path):
    recipe, keys = exact_data(tmp_path)
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    kill_while_saving(exact_args(recipe, out, 2, "train.checkpoint_every=4"), out, workspace, 8)  # 2 x 2, at 4
    kill_while_saving(exact_args(recipe, out, 1, "train.checkpoint_every=3", "data.workers=1"), out, workspace, 9)
    result = unimodal(*exact_args(recipe, out, 2, "train.checkpoint_every=100", "data.workers=1"), cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming at step 6" in result.stdout and "1 -> 2 ranks, 1 -> 1 workers" in result.stdout

    lines = [json.loads(x) for r in (0, 1) for x in (out / "samples" / f"rank{r}.jsonl").read_text().splitlines()]
    trained = Counter((k, e) for line in lines for k, e in zip(line["keys"], line["epochs"]))
    assert max(trained.values()) == 1  # nothing trained twice in an epoch
    for name, epoch0 in keys.items():
        got = {k.split("/", 1)[1] for k, e in trained if e == 0 and k.startswith(name + "/")}
        assert got == epoch0, f"{name}: missing {sorted(epoch0 - got)}"
        # the kills came mid-epoch: epoch 0 of each dataset had samples trained after both resumes
        last = max(
            line["step"]
            for line in lines
            for k, e in zip(line["keys"], line["epochs"])
            if e == 0 and k.startswith(name)
        )
        assert last > 6, name

    # the task draws of each global micro-batch are the uninterrupted run's: equal before the first change,
    # after it the same sequence, of which a batch takes as many as its samples' sizes let it
    micro = {line["micro"]: line["draws"] for line in lines}
    assert sorted(micro) == list(range(2 * EXACT_STEPS))  # 2 micro-batches a step, each once, on every topology
    expected = uninterrupted_draws(recipe, workspace)
    for j, drawn in micro.items():
        n = min(len(drawn), len(expected[j]))
        assert n and drawn[:n] == expected[j][:n], j
    assert all(micro[j] == expected[j] for j in range(2 * 4)), "the first 4 steps ran on the same topology"

    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert len(losses) == EXACT_STEPS and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert adam_steps(out / "checkpoints" / tag(EXACT_STEPS)) == {float(EXACT_STEPS)}  # loaded, never reset
    with weights_only_loads():
        saved = torch.load(out / "checkpoints" / tag(EXACT_STEPS) / "mp_rank_00_model_states.pt", map_location="cpu")
    ledger = saved["shared"]["ledger"]  # one for the job, united at each save: epochs consumed whole are closed
    assert all(0 in ledger["closed"][name] and 0 not in ledger["open"][name] for name in PER_SHARD), ledger


def test_a_checkpoint_from_before_the_ledger_resumes_on_its_own_topology_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    checkpoints = Checkpointer(None, tmp_path, keep=1, topology={})
    checkpoints.track({"ledger": SampleLedger([])})
    checkpoints.saved, checkpoints.reshard = [{"loader": {}}], False  # what `load` finds in such a checkpoint
    checkpoints.restore("ledger")  # the same topology: the loader's positions are exact, the ledger starts afresh
    checkpoints.reshard = True
    with pytest.raises(ValueError, match=r"no 'ledger' state .* resume it on the topology that wrote it"):
        checkpoints.restore("ledger")
