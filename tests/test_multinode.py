"""A 2-node job on this machine: two launch/torchrun.sh launchers, one rank each, meeting at 127.0.0.1.

It must split the data by node as a single node splits it by rank: every
sample read once per epoch, and the losses of the same recipe run as 2 ranks
on one node (`unimodal train --nproc 2`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import REPO, SMOKE, unimodal, unimodal_env
from test_resume import deterministic

from unimodal.config import expand_shards
from unimodal.recipe import load_recipe
from unimodal.train.launch import free_port

SETS = [
    "train.steps=6",
    "train.checkpoint_every=1000",
    "logging.every=1",
    "logging.sample_log=true",
    "logging.wandb.mode=disabled",
    "data.datasets.0.resample=false",
    "data.datasets.1.resample=false",
    "data.shuffle_buffer=0",  # samples in shard order, so that a rank's log shows where its epochs end
]


def set_args(out: Path) -> list[str]:
    return [a for s in [*SETS, f"train.output_dir={out}"] for a in ("--set", s)]


def run_two_nodes(out: Path, cwd: Path) -> None:
    env = unimodal_env() | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's torchrun
        "NNODES": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GPUS_PER_NODE": "1",
        "RDZV_ID": f"test-{os.getpid()}",
    }
    cmd = [str(REPO / "launch" / "torchrun.sh"), str(SMOKE / "stage1.yaml"), *set_args(out)]
    nodes = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]


def shard_keys(pattern: str) -> list[str]:
    keys = set()
    for shard in expand_shards(pattern):
        with tarfile.open(shard) as tar:
            keys.update(member.name.split(".", 1)[0] for member in tar.getmembers())
    return sorted(keys)


def sample_lines(out: Path) -> list[list[dict]]:
    """Each rank's sample log."""
    paths = sorted((out / "samples").glob("rank*.jsonl"))
    return [[json.loads(line) for line in path.read_text().splitlines()] for path in paths]


@pytest.fixture(scope="module")
def runs(workspace) -> tuple[Path, Path]:
    two_nodes, one_node = workspace / "runs" / "two-nodes", workspace / "runs" / "one-node"
    run_two_nodes(two_nodes, workspace)
    result = unimodal("train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *set_args(one_node), cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return two_nodes, one_node


def test_two_nodes_read_every_sample_once_per_epoch(runs, in_workspace):
    two_nodes, _ = runs
    ranks = sample_lines(two_nodes)
    assert len(ranks) == 2
    for dataset in load_recipe(SMOKE / "stage1.yaml", SETS).data.datasets:
        seen = defaultdict(Counter)  # epoch: {key: times read}
        started = []  # per rank, the last epoch begun before its last batch
        for lines in ranks:
            mine = [
                (k, e)
                for line in lines
                for k, e in zip(line["keys"], line["epochs"])
                if k.startswith(dataset.name + "/")
            ]
            for key, epoch in mine:
                seen[epoch][key.split("/", 1)[1]] += 1
            started.append(
                max(
                    e
                    for line in lines[:-1]
                    for k, e in zip(line["keys"], line["epochs"])
                    if k.startswith(dataset.name + "/")
                )
            )
        # A sample that did not fit its batch opens the next one, so an epoch begun
        # before a rank's last batch ends that rank's earlier epochs, with the last batch.
        complete = min(started)
        assert complete >= 1, f"{dataset.name}: 6 steps should finish an epoch on every rank"
        for epoch in range(complete):
            assert sorted(seen[epoch]) == shard_keys(dataset.shards), (
                f"{dataset.name}, epoch {epoch}: keys missing or extra"
            )
            assert set(seen[epoch].values()) == {1}, f"{dataset.name}, epoch {epoch}: keys read twice"


def test_two_nodes_log_the_losses_of_two_ranks_on_one_node(runs):
    two_nodes, one_node = runs
    records = deterministic(two_nodes)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records == deterministic(one_node)

    # and the job as a whole trained the same samples at every step
    def per_step(out):
        steps = defaultdict(list)
        for lines in sample_lines(out):
            for line in lines:
                steps[line["step"]] += line["keys"]
        return {step: sorted(keys) for step, keys in steps.items()}

    assert per_step(two_nodes) == per_step(one_node)
