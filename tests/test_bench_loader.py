"""bench/loader.py --quick runs end to end and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_loader_bench_quick_ends_with_json():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loader.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "loader"
    for m in ("image", "audio", "video", "text"):
        assert result[f"{m}_ratio"] > 0
        for key in ("full_samples_per_s", "full_tokens_per_s", "bare_samples_per_s", "ratio"):
            assert result[f"{m}_w1_{key}"] > 0
