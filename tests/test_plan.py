"""`unimodal plan`: sizes, target and achieved mix, samples and epochs per stage, before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMOKE

from unimodal.cli import main
from unimodal.commands.plan import format_plan, plan
from unimodal.data.loader import build_train_loader
from unimodal.recipe import load_recipe


def demo_sizes(workspace) -> dict[str, int]:
    index = json.loads((workspace / "data/demo/train/index.json").read_text())["shards"]
    prefixes = {"digit-captions": "image", "number-words": "text", "spoken-digits": "audio", "moving-digits": "video"}
    return {name: sum(e["samples"] for e in index if e["name"].startswith(p)) for name, p in prefixes.items()}


def test_plan_smoke_curriculum_achieves_every_target(in_workspace, capsys):
    main(["plan", str(SMOKE / "curriculum.yaml"), "--simulate", "20000", "--json"])  # `unimodal plan`, in this process
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["stages"]] == ["smoke-stage1", "smoke-stage2"]
    sizes = demo_sizes(in_workspace)
    for stage in report["stages"]:
        for name, d in stage["datasets"].items():
            assert abs(d["achieved"] - d["target"]) < 0.01, (stage["name"], name, d)
            assert d["size"] == sizes[name]
            assert d["epochs"] == pytest.approx(stage["steps"] * d["samples_per_step"] / sizes[name])
    stage2 = report["stages"][1]["datasets"]
    assert [stage2[n]["target"] for n in sizes] == pytest.approx([1 / 6, 1 / 6, 1 / 3, 1 / 3])


def test_samples_per_step_matches_the_loader(in_workspace):
    recipe = load_recipe(SMOKE / "stage2.yaml", ["data.workers=0"])
    counts = [len(b["dataset"]) for b, _ in zip(build_train_loader(recipe, 0), range(5))]  # within 1% of 20's mean
    stage = plan(SMOKE / "stage2.yaml", nproc=1, overrides=["data.workers=0"])["stages"][0]
    assert stage["samples_per_step"] == pytest.approx(np.mean(counts), rel=0.15)


def test_a_ramp_is_planned_over_the_stage(in_workspace):
    ramp = "data.sampling={ramp: {dataset: spoken-digits, steps: 250}}"  # half of stage 2's 500 steps
    report = plan(SMOKE / "stage2.yaml", nproc=2, overrides=[ramp], draws=20_000)
    datasets = report["stages"][0]["datasets"]
    for d in datasets.values():
        assert abs(d["achieved"] - d["target"]) < 0.01
    assert 0.2 < datasets["spoken-digits"]["target"] < 1 / 3  # ramped in: less than its full share
    text = format_plan(report)
    assert "spoken-digits" in text and "achieved" in text and "epochs" in text and "estimates:" in text


def test_plan_names_a_bad_recipe(in_workspace, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", str(SMOKE / "stage2.yaml"), "--set", "data.sampling={ramp: {dataset: nope, steps: 5}}"])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "stage2.yaml" in err and "no dataset named 'nope'" in err
