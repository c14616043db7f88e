"""bench/mfu.py runs end to end on CPU (the GPU run is the same code with --device cuda)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_mfu_bench_smoke_on_cpu():
    cmd = [
        sys.executable,
        "bench/mfu.py",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--batch-tokens",
        "4096",
    ]
    run = subprocess.run(
        cmd,
        cwd=REPO,
        env=dict(os.environ, DS_ACCELERATOR="cpu", MASTER_PORT="29671"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and 0 < result["mfu"] < 1 and result["tokens_per_s"] > 0
