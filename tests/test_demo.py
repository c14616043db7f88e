"""The demo command end to end on a small workspace: curriculum, evaluation, summary."""

from __future__ import annotations

import json

from conftest import SMOKE, unimodal

from unimodal.cli import main


def test_demo_runs_the_two_stage_curriculum_and_writes_a_summary(workspace, monkeypatch, capsys):
    result = unimodal(
        "demo",
        "--curriculum",
        str(SMOKE / "curriculum.yaml"),
        "--set",
        "train.steps=6",
        "--set",
        "logging.every=3",
        "--set",
        "train.checkpoint_every=3",
        cwd=workspace,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workspace / "runs" / "demo" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2
    assert [s["stage"] for s in summary["stages"]] == ["smoke-stage1", "smoke-stage2"]
    assert {n: d["modality"] for n, d in summary["datasets"].items()} == {
        "digit-captions": "image",
        "number-words": "text",
        "spoken-digits": "audio",
        "moving-digits": "video",
    }
    assert all(0.0 <= d["metrics"]["exact_match"] <= 1.0 for d in summary["datasets"].values())
    for line in ("dataset", "digit-captions", "moving-digits"):
        assert line in result.stdout
    # output to a file, not a terminal: no live bar's carriage-return updates, one progress line per record
    assert "\r" not in result.stdout + result.stderr
    progress = [line for line in result.stderr.splitlines() if "/6, loss " in line]
    assert [line.split(",")[0] for line in progress] == [
        f"smoke-stage{s}: step {n}/6" for s in (1, 2) for n in (3, 6)
    ], progress
    for stage in ("stage1", "stage2"):
        out = workspace / "runs" / "demo" / stage
        assert list((out / "wandb").glob("offline-run-*"))
        assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [3, 6]
    # stage 2 started from stage 1's weights
    used = (workspace / "runs" / "demo" / "stage2" / "recipe.yaml").read_text()
    assert "init_from: runs/demo/stage1" in used

    monkeypatch.chdir(workspace)
    main(["curriculum", str(SMOKE / "curriculum.yaml"), "--set", "train.steps=6"])  # again, in this process
    assert capsys.readouterr().out.count("already done, skipped") == 2
