"""bench/multitask.py and bench/curriculum.py run end to end: a few steps, one seed, on the session workspace.

Both scripts are mostly process start-ups (one rank each, one thread), so they run side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, unimodal_env


@pytest.fixture(scope="module")
def studies(workspace) -> dict[str, dict]:
    """Each script's last line (its JSON summary), both run at once for 4 steps with seed 0."""
    runs = {
        script: subprocess.Popen(
            [sys.executable, f"bench/{script}.py", "--data", str(workspace), "--seeds", "0", "--jobs", "1"]
            + ["--steps", "4"],
            cwd=REPO,
            env=unimodal_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in ("multitask", "curriculum")
    }
    out = {}
    for script, run in runs.items():
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]
        out[script] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("arm", ["joint", "single", "single_same_samples"])
def test_multitask_arm_keys(studies, arm):
    multitask = studies["multitask"]
    assert 0 <= multitask[f"{arm}_mean"] <= 1 and multitask[f"{arm}_std"] == 0
    assert set(multitask[arm]) == {"0"} and multitask[f"{arm}_samples"]["0"] > 0


def test_multitask_same_samples_is_fewer_steps(studies):
    multitask = studies["multitask"]
    assert multitask["seeds"] == [0] and multitask["small_train_samples"] > 0
    assert 1 <= multitask["single_same_samples_steps"]["0"] <= multitask["steps"]


def test_curriculum_keys(studies):
    result = studies["curriculum"]
    assert result["seeds"] == [0]
    assert result["same_mix_weights"] == pytest.approx(  # 2 + 2 steps: stage 1's 1:1 then stage 2's 1:1:2:2
        {"digit-captions": 1 / 3, "number-words": 1 / 3, "spoken-digits": 1 / 6, "moving-digits": 1 / 6}
    )
    for arm in ("curriculum", "all_at_once", "same_mix"):
        assert 0 <= result[f"{arm}_mean"] <= 1 and set(result[arm]) == {"0"}
        assert set(result[f"{arm}_per_modality"]) == {"image", "text", "audio", "video"}
