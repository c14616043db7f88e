"""The evaluation harness on the demo's real shards: metrics per dataset, missing-modality
evaluation, and the results out as a table, JSON and a record on the run's dashboard."""

from __future__ import annotations

import json

import pytest
import torch
import wandb
import yaml
from conftest import SMOKE

from unimodal.cli import main
from unimodal.config import Recipe, RecipeError, expand_shards
from unimodal.data.stream import eval_samples
from unimodal.eval.harness import evaluate, load_model, score, subset_batches
from unimodal.eval.report import format_table, log_to_run
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.pretrained import save_weights
from unimodal.objectives import objective
from unimodal.recipe import read_yaml
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.train.validate import in_batch_order

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def datasets(root) -> list[dict]:
    """One dataset per objective with a metric (mim has none and is left out of the results)."""

    def demo(kind: str) -> dict:
        base = f"{root}/data/demo"
        return dict(shards=f"{base}/train/{kind}-000000.tar", eval_shards=f"{base}/test/{kind}-000000.tar")

    pair = {"audio": "wav", "text": "txt"}
    return [
        dict(
            name="caption",
            task="caption",
            **demo("image"),
            inputs={"image": "png"},
            target="txt",
            metrics=["exact_match", "wer", "bleu"],
        ),
        dict(name="spoken", task="asr", **demo("audio"), inputs=pair, target="txt"),  # the answer is also an input
        dict(name="mlm", task="mlm", **demo("text"), inputs={"text": "txt"}, objective="mlm"),
        dict(name="mim", task="mim", **demo("image"), inputs={"image": "png"}, objective="mim"),
        dict(
            name="pairs",
            task="contrast",
            **demo("audio"),
            inputs=pair,
            objective="contrastive",
            metrics=["recall@1", "recall@5"],
        ),
        dict(name="match", task="match", **demo("audio"), inputs=pair, objective="itm"),
    ]


def raw_recipe(root) -> dict:
    raw = read_yaml(SMOKE / "stage1.yaml")
    raw["tokenizer"]["text"] = f"{root}/runs/demo/tokenizer/sp.model"
    raw["data"]["datasets"] = datasets(root)
    raw["train"]["max_new_tokens"] = 6
    return raw


@pytest.fixture(scope="module")
def recipe(workspace) -> Recipe:
    return Recipe.model_validate(raw_recipe(workspace))


@pytest.fixture(scope="module")
def model(recipe) -> UnifiedModel:
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    torch.manual_seed(0)
    return UnifiedModel(ModelConfig.from_preset("tiny", tokenizer.vocab_size, tokenizer.patch_dims)).eval()


def with_datasets(recipe: Recipe, names: list[str], **changes) -> Recipe:
    """`recipe` with only the named datasets, each with `changes`."""
    kept = [ds.model_dump() | changes for ds in recipe.data.datasets if ds.name in names]
    return Recipe.model_validate(recipe.model_dump() | {"data": recipe.data.model_dump() | {"datasets": kept}})


def test_each_dataset_reports_the_metrics_its_recipe_names(recipe, model):
    results = evaluate(recipe, model, batch_size=16)
    assert {n: list(r["metrics"]) for n, r in results.items()} == {
        "caption": ["exact_match", "wer", "bleu"],
        "spoken": ["exact_match"],
        "mlm": ["accuracy"],
        "pairs": ["recall@1", "recall@5"],
        "match": ["accuracy"],
    }  # mim has no held-out metric
    for ds in recipe.data.datasets:
        if ds.name in results:  # every held-out sample, once
            assert results[ds.name]["samples"] == sum(1 for _ in eval_samples(expand_shards(ds.eval_shards)))
            assert results[ds.name]["skipped"] == 0 and results[ds.name]["dropped"] == []
    caption, pairs = results["caption"]["metrics"], results["pairs"]["metrics"]
    assert 0 <= caption["exact_match"] <= 1 and caption["wer"] >= 0 and 0 <= caption["bleu"] <= 100
    assert 0 <= pairs["recall@1"] <= pairs["recall@5"] <= 1
    assert all(0 <= results[n]["metrics"]["accuracy"] <= 1 for n in ("mlm", "match"))


def test_predictions_split_over_ranks_score_as_one_pass(recipe, model):
    """Validation during training (unimodal/train/validate.py): batch j on rank j % world, the ranks' per-batch
    predictions (the objective's `predict`) put back in batch order and measured once give a one-process `score`
    over the same batches, for the metrics that are not sums over samples too (corpus BLEU and WER, recall@K over
    the whole set, itm's in-batch negatives)."""
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    world, n = 3, 14  # batches of 4, 4, 4, 2: rank 0 holds two of them, ranks 1 and 2 one each
    assert in_batch_order([[0, 3], [1], [2]]) == [0, 1, 2, 3]
    for d, ds in enumerate(recipe.data.datasets):
        if ds.name not in ("caption", "pairs", "match"):
            continue
        batches = subset_batches(recipe, d, ds, tokenizer, n, 4)
        assert [len(refs) for _, refs in batches] == [4, 4, 4, 2]
        scoring = objective(ds.objective)
        parts = [
            [scoring.predict(model, b, refs, tokenizer, recipe.train.max_new_tokens) for b, refs in batches[r::world]]
            for r in range(world)
        ]
        measured = scoring.measure(in_batch_order(parts), ds)
        assert measured == score(ds, model, batches, tokenizer, recipe.train.max_new_tokens), ds.name


def test_dropped_modality_is_never_decoded(recipe, model):
    # the audio field named here is in no sample: every sample is broken, unless audio is dropped
    flac = with_datasets(recipe, ["spoken"], inputs={"audio": "flac", "text": "txt"})
    with pytest.raises(RecipeError, match=r"dataset spoken: no decodable sample in eval_shards \(30 skipped\)"):
        evaluate(flac, model)
    without_audio = evaluate(flac, model, drop=["audio"])["spoken"]
    assert (without_audio["samples"], without_audio["skipped"], without_audio["dropped"]) == (30, 0, ["audio"])
    assert without_audio["modality"] == "audio"  # the dataset's, as in the full evaluation


def test_drop_names_the_dataset_it_cannot_serve(recipe, model):
    cases = [
        (["image"], "--drop image: dataset caption has no input left (its inputs: image)"),
        (
            ["audio"],
            "--drop audio: dataset pairs cannot be evaluated without audio: inputs: objective contrastive pairs exactly two inputs, got 1",
        ),
        (["video"], "--drop video: no dataset of recipe smoke-stage1 has such an input"),
    ]
    for drop, words in cases:
        with pytest.raises(RecipeError) as err:
            evaluate(recipe, model, drop=drop)
        assert words in str(err.value), (drop, str(err.value))


def test_eval_command_writes_a_table_json_and_a_record_on_the_run(recipe, model, in_workspace, tmp_path, capsys):
    run = tmp_path / "stage"  # a finished stage: its weights and training records
    save_weights(run, {k: v.clone() for k, v in model.state_dict().items()}, model.cfg)  # untied, as training saves
    (run / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 2.0}) + "\n")
    raw = raw_recipe(in_workspace)
    raw["data"]["datasets"] = [d for d in raw["data"]["datasets"] if d["name"] in ("caption", "spoken")]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))

    capsys.readouterr()
    main(
        [
            "eval",
            str(tmp_path / "recipe.yaml"),
            "--checkpoint",
            str(run),
            "--drop",
            "audio",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    stdout = capsys.readouterr().out  # `unimodal eval`'s, run in this process
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["spoken"]["dropped"] == ["audio"] and results["caption"]["dropped"] == []
    table = stdout.splitlines()
    assert table[0].split() == ["dataset", "modality", "task", "metric", "value", "samples", "dropped"]
    assert table[2].split() == [
        "caption",
        "image",
        "caption",
        "exact_match",
        f"{results['caption']['metrics']['exact_match']:.3f}",
        str(results["caption"]["samples"]),
        "-",
    ]
    assert table[5].split()[:4] + table[5].split()[-1:] == ["spoken", "audio", "asr", "exact_match", "audio"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": 7} | {
        f"eval-without-audio/{n}/{m}": v for n, r in results.items() for m, v in r["metrics"].items()
    }
    assert f"logged to {run / 'metrics.jsonl'}" in stdout
    with pytest.raises(RecipeError, match=f"--checkpoint {tmp_path}: no model.safetensors or config.json"):
        load_model(tmp_path)


def test_eval_record_goes_into_the_training_runs_wandb_run(recipe, model, tmp_path):
    recipe = with_datasets(recipe, ["caption"])
    recipe = Recipe.model_validate(recipe.model_dump() | {"logging": {"wandb": {"mode": "offline"}}})
    trained = wandb.init(project="unimodal", mode="offline", dir=str(tmp_path))  # as training leaves it
    trained.finish()
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    results = evaluate(recipe, model)
    logged = log_to_run(tmp_path, recipe, results)
    assert logged == [str(tmp_path / "metrics.jsonl"), f"wandb run {trained.id} (offline)"]
    # the training run resumed by its id, not a new run: `wandb sync` puts both on one dashboard page
    assert {p.name.rsplit("-", 1)[1] for p in (tmp_path / "wandb").glob("offline-run-*")} == {trained.id}


def test_table_has_a_row_per_metric():
    results = {
        "pairs": {
            "modality": "audio",
            "task": "contrast",
            "objective": "contrastive",
            "dropped": [],
            "metrics": {"recall@1": 0.25, "recall@5": 0.75},
            "samples": 4,
            "skipped": 0,
        },
        "mt": {
            "modality": "text",
            "task": "translate",
            "objective": "seq2seq",
            "dropped": [],
            "metrics": {"bleu": 31.4159},
            "samples": 2,
            "skipped": 0,
        },
    }
    assert format_table(results).splitlines() == [
        "dataset  modality  task       metric    value  samples",
        "-------  --------  ---------  --------  -----  -------",
        "pairs    audio     contrast   recall@1  0.250  4",
        "pairs    audio     contrast   recall@5  0.750  4",
        "mt       text      translate  bleu      31.42  2",
    ]
