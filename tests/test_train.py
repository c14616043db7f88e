"""Real 2-rank DeepSpeed runs on CPU: ZeRO-2 learns and its weights evaluate; ZeRO-3 takes ragged batches (resume: test_resume.py)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMOKE, TINY_STEPS, train_stage1, unimodal

from unimodal.config import RecipeError
from unimodal.eval.harness import evaluate, load_model, score, subset_batches
from unimodal.model.pretrained import load_weights
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.train.validate import BATCH

VAL_EVERY, VAL_SAMPLES = 8, 18  # validation during training at steps 8 and 16: a batch of 16 on rank 0, of 2 on rank 1


def records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_rank_zero2_run_learns(tiny_run, workspace):
    """tests/conftest.py's `tiny_run`: 16 steps of the smoke stage 1 on 2 ranks, ZeRO-2."""
    done = json.loads((tiny_run / "done.json").read_text())
    assert (done["world_size"], done["zero_stage"], done["steps"]) == (2, 2, TINY_STEPS)
    recs = records(tiny_run)
    assert [r["step"] for r in recs] == list(range(1, TINY_STEPS + 1))
    first, last = recs[0], recs[-1]
    assert last["loss"] < 0.7 * first["loss"]
    for task in ("digit-captions", "number-words"):
        assert last[f"loss/{task}"] < first[f"loss/{task}"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["padding_efficiency"] <= 1 for r in recs)
    assert all(0 < r["mfu"] < 1 and r["tflops_per_s"] > 0 for r in recs)  # against a measured CPU peak
    # epochs from index.json: samples consumed so far over the dataset's size
    size = json.loads((workspace / "data/demo/train/index.json").read_text())
    images = sum(e["samples"] for e in size["shards"] if e["name"].startswith("image-"))
    consumed = sum(r["samples/digit-captions"] for r in recs)
    assert last["epochs/digit-captions"] == pytest.approx(consumed / images)
    assert list((tiny_run / "wandb").glob("offline-run-*"))
    assert list((tiny_run / "checkpoints").glob("step*")) and (tiny_run / "recipe.yaml").is_file()
    # the values used, overrides included, are saved beside the run
    assert load_recipe(tiny_run / "recipe.yaml", check_files=False).train.steps == TINY_STEPS


@pytest.fixture(scope="module")
def validated(workspace):
    """`tiny_run`'s stage with validation during training on (and nothing else: one checkpoint, no loggers)."""
    sets = [
        f"train.steps={TINY_STEPS}",
        f"train.checkpoint_every={TINY_STEPS}",
        f"train.eval_every={VAL_EVERY}",
        f"train.eval_samples={VAL_SAMPLES}",
        "logging.wandb.mode=disabled",
        "data.workers=0",
    ]
    return train_stage1(workspace, workspace / "runs" / "validated", sets)


def test_validation_during_training_falls_and_is_a_one_process_evaluation(validated, in_workspace):
    val = [r for r in records(validated) if "loss" not in r]
    assert [r["step"] for r in val] == list(range(VAL_EVERY, TINY_STEPS + 1, VAL_EVERY))
    for task in ("digit-captions", "number-words"):
        assert val[-1][f"val/{task}/loss"] < val[0][f"val/{task}/loss"]
    # the last one, on the stage's final weights: what one process scores on the same held-out samples
    recipe = load_recipe(SMOKE / "stage1.yaml")
    model = load_model(validated).eval()
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    with torch.no_grad():
        for d, ds in enumerate(recipe.data.datasets):
            batches = subset_batches(recipe, d, ds, tokenizer, VAL_SAMPLES, BATCH)
            loss = torch.cat([model(b)["sample_loss"] for b, _ in batches]).double().mean().item()
            assert val[-1][f"val/{ds.name}/loss"] == pytest.approx(loss, rel=1e-6)
            assert (
                val[-1][f"val/{ds.name}/exact_match"]
                == score(ds, model, batches, tokenizer, recipe.train.max_new_tokens)["exact_match"]
            )
    without = ["train.eval_every=4", "data.datasets.0.eval_shards=null", "data.datasets.1.eval_shards=null"]
    with pytest.raises(RecipeError, match=r"train\.eval_every: no dataset has eval_shards to validate on"):
        load_recipe(SMOKE / "stage1.yaml", without)


def test_evaluation_reads_the_stage_weights(tiny_run, in_workspace):
    recipe = load_recipe(SMOKE / "stage1.yaml")
    results = evaluate(recipe, load_model(tiny_run))
    assert set(results) == {"digit-captions", "number-words"}
    for r in results.values():
        assert r["samples"] > 0 and list(r["metrics"]) == ["exact_match"] and 0.0 <= r["metrics"]["exact_match"] <= 1.0


def test_zero3_bf16_with_ragged_batches_of_all_modalities(workspace):
    """Each rank's batches differ in shape and modality mix; ZeRO-3 must still gather and step."""
    out = workspace / "runs" / "train-test" / "zero3"
    sets = [
        "init_from=null",
        "train.steps=6",
        "logging.every=1",
        f"train.output_dir={out}",
        "deepspeed.zero_optimization.stage=3",
        "deepspeed.bf16.enabled=true",
    ]
    result = unimodal(
        "train", str(SMOKE / "stage2.yaml"), "--nproc", "2", *[a for s in sets for a in ("--set", s)], cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    assert (done["zero_stage"], done["world_size"], done["steps"]) == (3, 2, 6)
    recs = records(out)
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert all(r["padding_efficiency"] < 1 for r in recs)  # ragged: samples of different lengths
    state, _ = load_weights(out)  # gathered from the partitions into one file
    assert all(t.dtype == torch.float32 for t in state.values())
