"""The recipe families: every stage validates, and every smoke curriculum trains on the demo data on 2 CPU ranks.

Full-scale recipes name corpora that are not here, so they are validated
without their files. `recipes/smoke` (the demo's family) runs in test_demo.py.
"""

from __future__ import annotations

import itertools
import json

import pytest
import yaml
from conftest import REPO, unimodal

from unimodal.recipe import load_recipe
from unimodal.train.curriculum import load_curriculum
from unimodal.train.start import describe

RECIPES = REPO / "recipes"
FAMILIES = ("unival", "multimodel", "momo")
DEMO_SIZED = {"smoke", "osmd"}  # tiny recipes for the demo data; recipes/osmd trains there only (tests/test_osmd.py)
CURRICULA = sorted(RECIPES.rglob("curriculum.yaml"))
STEPS = ["--set", "train.steps=3", "--set", "train.checkpoint_every=3", "--set", "logging.every=3"]
STEPS += ["--set", "logging.wandb.mode=disabled"]  # a few seconds a stage, and no part of what is checked here


def name(path) -> str:
    return str(path.relative_to(RECIPES))


def test_every_family_has_a_full_and_a_smoke_curriculum_and_a_readme():
    for family in FAMILIES:
        for path in ("curriculum.yaml", "smoke/curriculum.yaml", "README.md"):
            assert (RECIPES / family / path).is_file(), f"recipes/{family}/{path}"


@pytest.mark.parametrize("path", CURRICULA, ids=name)
def test_every_curriculum_validates_with_every_stage(path, in_workspace):
    _, stages = load_curriculum(path, nproc=2, check_files=False)
    listed = {stage.path.resolve() for stage in stages}
    assert listed == {p.resolve() for p in path.parent.glob("*.yaml") if p.name != "curriculum.yaml"}
    if DEMO_SIZED & set(path.relative_to(RECIPES).parts):
        assert all(s.recipe.model.preset == "tiny" for s in stages)
    else:
        assert all(s.recipe.model.preset == "base" and s.recipe.deepspeed["bf16"]["enabled"] for s in stages)
        assert all(s.recipe.deepspeed["zero_optimization"]["stage"] == 2 for s in stages)


@pytest.mark.parametrize("path", sorted(set(RECIPES.rglob("*.yaml")) - set(CURRICULA)), ids=name)
def test_every_stage_recipe_validates(path, in_workspace):
    load_recipe(path, check_files=False)


def test_unival_balances_tasks_by_temperature():
    for path in RECIPES.glob("unival/**/stage*.yaml"):
        assert load_recipe(path, check_files=False).data.sampling.strategy == "temperature", name(path)


def test_multimodel_smoke_maps_eight_tasks_with_their_own_prompts():
    datasets = load_recipe(RECIPES / "multimodel" / "smoke" / "joint.yaml", check_files=False).data.datasets
    assert len(datasets) == 8 and len({d.task_prompt for d in datasets}) == 8


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_curriculum_trains_every_stage_on_the_demo_data(family, in_workspace):
    path = RECIPES / family / "smoke" / "curriculum.yaml"
    result = unimodal("curriculum", str(path), "--nproc", "2", *STEPS, cwd=in_workspace, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, stages = load_curriculum(path, nproc=2, overrides=STEPS[1::2])
    for stage in stages:
        out = stage.recipe.train.output_dir
        done = json.loads((out / "done.json").read_text())
        assert (done["steps"], done["world_size"]) == (3, 2), out
        assert (out / "model.safetensors").is_file()
    # every stage after the first started from the one before it, carrying what its recipe says
    for before, after in itertools.pairwise(stages):
        used = yaml.safe_load((after.recipe.train.output_dir / "recipe.yaml").read_text())
        assert used["init_from"] == str(before.recipe.train.output_dir)
        assert f"from step 0, {describe(after.recipe)}" in result.stdout
