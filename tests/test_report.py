"""What a real run shows: its records as TensorBoard scalars, and `unimodal report`'s plots and summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMOKE, TINY_STEPS
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unimodal.cli import main
from unimodal.recipe import load_recipe
from unimodal.train.metrics import MetricsLogger

DASHBOARD = [
    "loss",
    "loss/digit-captions",
    "tokens_per_s",
    "mfu",
    "data_wait_s",
    "padding_efficiency",
    "mix/number-words",
    "mix_target/number-words",
    "peak_memory_mib",
]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_the_records_of_metrics_jsonl(tiny_run):
    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    recs = records(tiny_run)
    for key in DASHBOARD:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["step"] for r in recs] == list(range(1, TINY_STEPS + 1))
        assert np.allclose([s.value for s in scalars], [r[key] for r in recs], rtol=1e-6), key
    assert all(r["peak_memory_mib"] > 100 for r in recs)  # a rank process with torch loaded


def test_a_resumed_run_replaces_the_tensorboard_steps_after_its_checkpoint(tmp_path):
    recipe = load_recipe(
        SMOKE / "stage1.yaml",
        [f"train.output_dir={tmp_path}", "logging.tensorboard=true", "logging.wandb.mode=disabled"],
        check_files=False,
    )
    for resumed, losses in ((0, [4.0, 3.0, 2.0]), (1, [2.5, 1.5])):  # stopped after step 3, resumed from step 1
        logger = MetricsLogger(recipe, resumed, enabled=True)
        for step, loss in enumerate(losses, resumed + 1):
            logger.log({"step": step, "loss": loss, "tokens_per_s": 1.0})
        logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("loss")] == [(1, 4.0), (2, 2.5), (3, 1.5)]
    assert [r["loss"] for r in records(tmp_path)] == [4.0, 2.5, 1.5]


def test_validation_records_reach_tensorboard_a_line_of_progress_and_the_report(tmp_path, capsys):
    recipe = load_recipe(
        SMOKE / "stage1.yaml",
        [f"train.output_dir={tmp_path}", "logging.tensorboard=true", "logging.wandb.mode=disabled"],
        check_files=False,
    )
    logger = MetricsLogger(recipe, 0, enabled=True)
    for step in (1, 2, 3, 4):
        train = {"loss": 5.0 - step, "loss/digit-captions": 5.0 - step, "tokens_per_s": 1.0, "samples_per_s": 1.0}
        mix = {"mix/digit-captions": 1.0, "mix_target/digit-captions": 1.0}
        logger.log({"step": step, **train, **mix, "padding_efficiency": 1.0, "data_wait_s": 0.0})
        if step % 2 == 0:  # train.eval_every=2
            logger.log({"step": step, "val/digit-captions/loss": 6.0 - step, "val/digit-captions/exact_match": 0.5})
    logger.close()
    assert "smoke-stage1: step 4, val/digit-captions/loss 2.000, val/digit-captions/exact_match 0.500" in (
        capsys.readouterr().err
    )
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("val/digit-captions/loss")] == [(2, 4.0), (4, 2.0)]
    main(["report", str(tmp_path)])
    text = (tmp_path / "report.txt").read_text()
    assert "steps: 4 logged in 4 records" in text and "held-out loss at step 4: digit-captions 2.0000" in text


def test_report_plots_and_summarises_a_run(tiny_run, capsys):
    main(["report", str(tiny_run)])
    for name in ("loss", "mix", "throughput"):
        with Image.open(tiny_run / "plots" / f"{name}.png") as png:
            assert png.format == "PNG" and png.size == (800, 450)
            pixels = np.asarray(png.convert("L"))
        assert (pixels < 128).mean() > 0.01  # axes, lines and labels drawn, not a blank page
    text = (tiny_run / "report.txt").read_text()
    assert capsys.readouterr().out == text
    last = records(tiny_run)[-1]
    assert (
        f"steps: {TINY_STEPS} logged in {TINY_STEPS} records" in text and "finished, 2 ranks, ZeRO-2, float32" in text
    )
    assert f"final loss: {last['loss']:.4f} (digit-captions {last['loss/digit-captions']:.4f}, " in text
    assert "skipped samples: none" in text and "MFU" in text


def test_report_names_a_directory_without_records(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["report", str(tmp_path)])
    assert exit.value.code == 2 and f"error: {tmp_path / 'metrics.jsonl'}: not found" in capsys.readouterr().err
