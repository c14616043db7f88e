"""The sample log reads as one uninterrupted run, whatever a kill left in it."""

from __future__ import annotations

import json

from unimodal.train.sample_log import SampleLog


def meta(step: int) -> dict:
    return {"keys": [f"ds/k{step}"], "epochs": [0], "micro": 2 * step - 1, "draws": [0, 0]}


def steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_run_drops_the_killed_runs_lines_after_its_checkpoint(tmp_path):
    log = SampleLog(tmp_path, rank=1, world=2, step=0, enabled=True)
    for step in range(1, 6):
        log.add(step, meta(step), trained=True)
    log.flush()
    path = tmp_path / "samples" / "rank1.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "keys": ["ds/k')  # cut short by SIGKILL

    resumed = SampleLog(tmp_path, rank=1, world=2, step=3, enabled=True)  # the checkpoint was at step 3
    for step in range(4, 6):
        resumed.add(step, meta(step), trained=step != 5)
    resumed.close()
    assert steps(path) == [1, 2, 3, 4, 5]
    assert json.loads(path.read_text().splitlines()[-1]) == {
        "step": 5,
        "micro": 9,
        "keys": ["ds/k5"],
        "epochs": [0],
        "draws": [0, 0],
        "trained": False,
    }


def test_a_run_resumed_on_fewer_ranks_trims_the_files_of_the_ranks_it_no_longer_has(tmp_path):
    for rank in range(3):
        log = SampleLog(tmp_path, rank=rank, world=3, step=0, enabled=True)
        for step in range(1, 6):
            log.add(step, meta(step), trained=True)
        log.close()
    SampleLog(tmp_path, rank=0, world=1, step=2, enabled=True).close()  # 3 ranks -> 1 from the step-2 checkpoint
    assert [steps(tmp_path / "samples" / f"rank{r}.jsonl") for r in range(3)] == [[1, 2]] * 3


def test_a_fresh_run_starts_a_new_log_and_a_disabled_one_writes_nothing(tmp_path):
    path = tmp_path / "samples" / "rank0.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 9, "keys": [], "epochs": [], "trained": true}\n')
    log = SampleLog(tmp_path, rank=0, world=1, step=0, enabled=True)
    log.add(1, meta(1), trained=True)
    log.close()
    assert steps(path) == [1]
    SampleLog(tmp_path / "off", rank=0, world=1, step=0, enabled=False).add(1, meta(1), trained=True)
    assert not (tmp_path / "off").exists()
