"""bench/multitask.py and bench/curriculum.py run end to end: a few steps, one seed, on the session workspace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, unimodal_env


def last_json(script: str, workspace, *args: str) -> dict:
    cmd = [sys.executable, f"bench/{script}", "--data", str(workspace), "--seeds", "0", "--jobs", "1", *args]
    run = subprocess.run(cmd, cwd=REPO, env=unimodal_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arm", ["joint", "single", "single_same_samples"])
def test_multitask_arm_keys(multitask, arm):
    assert 0 <= multitask[f"{arm}_mean"] <= 1 and multitask[f"{arm}_std"] == 0
    assert set(multitask[arm]) == {"0"} and multitask[f"{arm}_samples"]["0"] > 0


def test_multitask_same_samples_is_fewer_steps(multitask):
    assert multitask["seeds"] == [0] and multitask["small_train_samples"] > 0
    assert 1 <= multitask["single_same_samples_steps"]["0"] <= multitask["steps"]


def test_curriculum_keys(workspace):
    result = last_json("curriculum.py", workspace, "--steps", "4")
    assert result["seeds"] == [0]
    assert result["same_mix_weights"] == pytest.approx(  # 2 + 2 steps: stage 1's 1:1 then stage 2's 1:1:2:2
        {"digit-captions": 1 / 3, "number-words": 1 / 3, "spoken-digits": 1 / 6, "moving-digits": 1 / 6}
    )
    for arm in ("curriculum", "all_at_once", "same_mix"):
        assert 0 <= result[f"{arm}_mean"] <= 1 and set(result[arm]) == {"0"}
        assert set(result[f"{arm}_per_modality"]) == {"image", "text", "audio", "video"}


@pytest.fixture(scope="module")
def multitask(workspace) -> dict:
    return last_json("multitask.py", workspace, "--steps", "4")
