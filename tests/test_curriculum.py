"""A curriculum on 2 CPU ranks: stage 2 carries stage 1's optimiser state, and a stop in stage 2 resumes there.

One two-stage curriculum runs to the end (run "a"); a second curriculum shares
its stage 1 and holds a copy of stage 2 cut back to its first checkpoint, as a
run stopped there leaves it (run "b"). Both stages train image and text only,
so that a stage costs little more than its start-up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SMOKE, unimodal

from unimodal.cli import main
from unimodal.config import RecipeError
from unimodal.recipe import load_recipe
from unimodal.train.curriculum import load_curriculum

S1, S2, EVERY = 4, 4, 2
LR2, WARMUP2, DECAY2, CLIP2 = 1e-3, 4, 0.05, 0.5
BETA2 = 0.98  # AdamW's, in unimodal/train/engine.py


def write_stage(path, out_dir, **fields) -> None:
    """The smoke stage 1 (image and text), writing to `out_dir`, with `fields` ("train.lr": 1e-3) set."""
    raw = yaml.safe_load((SMOKE / "stage1.yaml").read_text())
    raw["train"].update(output_dir=str(out_dir), checkpoint_every=EVERY)
    raw["logging"]["every"] = 1
    raw["logging"]["wandb"]["mode"] = "disabled"  # a few seconds a stage, and no part of what is checked here
    for key, value in fields.items():
        *sections, last = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    path.write_text(yaml.safe_dump(raw))


def write_curriculum(path, *stages) -> None:
    path.write_text(yaml.safe_dump({"name": path.stem, "stages": [s.name for s in stages]}))


def stage2_fields(**extra) -> dict:
    return {
        "name": "test-stage2",
        "init_from": "previous",
        "carry": "optimizer",
        "train.steps": S2,
        "train.lr": LR2,
        "train.warmup_steps": WARMUP2,
        "train.weight_decay": DECAY2,
        "deepspeed.gradient_clipping": CLIP2,
        **extra,
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("curriculum")
    write_stage(root / "stage1.yaml", root / "out" / "stage1", name="test-stage1", **{"train.steps": S1})
    for run in ("a", "b"):
        write_stage(root / f"stage2{run}.yaml", root / "out" / run / "stage2", **stage2_fields())
        write_curriculum(root / f"{run}.yaml", root / "stage1.yaml", root / f"stage2{run}.yaml")
    return root


@pytest.fixture(scope="module")
def run_a(root, workspace):
    result = unimodal("curriculum", str(root / "a.yaml"), "--nproc", "2", cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def optimizer_states(ckpt) -> list[dict]:
    """Each rank's ZeRO-2 partition of the optimiser state (our own file: unpickling it is safe)."""
    files = sorted(ckpt.glob("zero_pp_rank_*_optim_states.pt"))
    assert len(files) == 2
    return [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]


def test_carry_optimizer_starts_stage_2_from_stage_1s_adam_state(run_a, root):
    assert "from step 0, from the weights and optimiser state of" in run_a.stdout
    first = optimizer_states(root / "out" / "stage1" / "checkpoints" / f"step{S1:08d}")
    after = optimizer_states(root / "out" / "a" / "stage2" / "checkpoints" / f"step{EVERY:08d}")
    for before, now in zip(first, after):
        groups = now["base_optimizer_state"]["param_groups"]
        for i, state in now["base_optimizer_state"]["state"].items():
            old = before["base_optimizer_state"]["state"][i]
            assert state["step"].item() == S1 + EVERY  # Adam's count goes on
            # v = beta2^k v_stage1 + (1 - beta2) sum(g^2): never below stage 1's moments, decayed
            assert old["exp_avg_sq"].abs().sum() > 0
            assert torch.all(state["exp_avg_sq"] >= BETA2**EVERY * old["exp_avg_sq"] * (1 - 1e-6))
        # this stage's hyperparameters, not the saved ones
        assert [g["weight_decay"] for g in groups] == [DECAY2, 0.0] and {g["initial_lr"] for g in groups} == {LR2}
        assert now["clip_grad"] == CLIP2
    # and its own LR schedule, fresh: warmup from its step 1
    assert records(root / "out" / "a" / "stage2")[0]["lr"] == pytest.approx(LR2 * 2 / WARMUP2)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stopped_in_stage_2(run_a, root, run: str) -> Path:
    """Stage 2 of curriculum `run` as a run stopped just after stage 2's first checkpoint leaves it."""
    stopped = root / "out" / run / "stage2"
    shutil.copytree(root / "out" / "a" / "stage2", stopped)
    shutil.rmtree(stopped / "checkpoints" / f"step{S2:08d}")
    (stopped / "checkpoints" / "latest").write_text(f"step{EVERY:08d}")
    for name in ("done.json", "model.safetensors", "config.json"):
        (stopped / name).unlink()
    return stopped


def test_a_curriculum_stopped_in_stage_2_resumes_there(run_a, root, workspace):
    stage1, a = root / "out" / "stage1", root / "out" / "a" / "stage2"
    weights1 = sha256(stage1 / "model.safetensors")
    b = stopped_in_stage_2(run_a, root, "b")
    result = unimodal("curriculum", str(root / "b.yaml"), "--nproc", "2", cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 1/2 test-stage1 already done, skipped" in result.stdout
    assert "stage 2/2 test-stage2, resuming from its latest checkpoint" in result.stdout
    assert f"resuming at step {EVERY}" in result.stdout
    done = json.loads((b / "done.json").read_text())
    assert (done["steps"], done["steps_this_run"]) == (S2, S2 - EVERY)
    assert [r["loss"] for r in records(b)] == [r["loss"] for r in records(a)]  # bit-exact on CPU
    assert sha256(stage1 / "model.safetensors") == weights1
    assert sha256(b / "model.safetensors") == sha256(a / "model.safetensors")


def test_a_stopped_stage_goes_on_on_another_world_size_that_keeps_its_global_batch(run_a, root, in_workspace):
    stopped_in_stage_2(run_a, root, "e")
    write_stage(root / "stage2e.yaml", root / "out" / "e" / "stage2", **stage2_fields())
    write_curriculum(root / "e.yaml", root / "stage1.yaml", root / "stage2e.yaml")
    load_curriculum(root / "e.yaml", nproc=1)  # 2 ranks x 1 -> 1 rank x 2: `unimodal curriculum --nproc 1` goes on
    with pytest.raises(RecipeError, match=r"stage2e\.yaml: deepspeed\.gradient_accumulation_steps: .* over 3 ranks"):
        load_curriculum(root / "e.yaml", nproc=3)  # refused before the first stage starts


def test_carry_optimizer_refuses_another_world_size_before_launch(run_a, root, workspace, monkeypatch, capsys):
    write_stage(root / "stage2c.yaml", root / "out" / "c" / "stage2", **stage2_fields())
    write_curriculum(root / "c.yaml", root / "stage1.yaml", root / "stage2c.yaml")
    monkeypatch.chdir(workspace)
    with pytest.raises(SystemExit) as exit:  # `unimodal curriculum`, in this process
        main(["curriculum", str(root / "c.yaml"), "--nproc", "1"])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert str(root / "stage2c.yaml") in err and "world size 2 there, 1 here" in err
    assert not (root / "out" / "c").exists()


def test_carry_mismatch_fails_before_the_first_stage_runs(in_workspace, tmp_path):
    write_stage(tmp_path / "stage1.yaml", tmp_path / "out1", **{"train.steps": S1})
    write_stage(
        tmp_path / "stage2.yaml", tmp_path / "out2", **stage2_fields(**{"deepspeed.zero_optimization": {"stage": 1}})
    )
    write_curriculum(tmp_path / "cur.yaml", tmp_path / "stage1.yaml", tmp_path / "stage2.yaml")
    with pytest.raises(RecipeError, match=r"stage2\.yaml: carry: optimizer .*zero stage 2 there, 1 here"):
        load_curriculum(tmp_path / "cur.yaml", nproc=2)
    load_curriculum(tmp_path / "cur.yaml", nproc=2, overrides=["carry=weights"])  # weights may cross ZeRO stages


def test_stage_recipes_that_cannot_start_are_named(in_workspace, tmp_path, capsys):
    write_stage(tmp_path / "alone.yaml", tmp_path / "out", carry="optimizer")
    with pytest.raises(RecipeError, match=r"alone\.yaml: invalid recipe\n.*carry: 'optimizer' needs init_from"):
        load_recipe(tmp_path / "alone.yaml")
    write_stage(tmp_path / "stage1.yaml", tmp_path / "same")
    write_stage(tmp_path / "stage2.yaml", tmp_path / "same", init_from="previous")
    write_curriculum(tmp_path / "cur.yaml", tmp_path / "stage1.yaml", tmp_path / "stage2.yaml")
    with pytest.raises(RecipeError, match=r"stage2\.yaml: train\.output_dir .* is also .*stage1\.yaml's"):
        load_curriculum(tmp_path / "cur.yaml", nproc=2)
    with pytest.raises(SystemExit) as exit:  # `unimodal train`, in this process
        main(["train", str(tmp_path / "stage2.yaml")])
    assert exit.value.code == 2
    assert "init_from: 'previous' is the previous stage of a curriculum" in capsys.readouterr().err
