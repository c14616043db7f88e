"""Held-out evaluation: each dataset's `eval_shards`, scored with the metrics its recipe names.

Reads every eval shard once, in order, through the same decode and tokenize
path as training (masks drawn as in epoch 0, itm negatives paired within each
eval batch), and loads plain weights (`model.safetensors`), so evaluation needs
neither DeepSpeed nor pickle.

Missing-modality evaluation (`drop`) evaluates each dataset as if its recipe
had no input of the dropped modalities: those fields are never decoded, so
the model sees the prompt and the remaining inputs only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from itertools import chain, islice
from pathlib import Path

import torch
from pydantic import ValidationError

from unimodal.config import DatasetConfig, Recipe, RecipeError, expand_shards
from unimodal.data.decode import BadSample, decode_example
from unimodal.data.stream import eval_samples
from unimodal.model import UnifiedModel
from unimodal.model.pretrained import NotPretrained, load_pretrained
from unimodal.objectives import Batches, objective
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import complete_rows
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID


def load_model(weights_dir: str | Path) -> UnifiedModel:
    """The model a finished stage or an `unimodal export` left in `weights_dir` (model.safetensors, config.json)."""
    try:
        return load_pretrained(weights_dir)
    except NotPretrained as err:
        raise RecipeError(f"--checkpoint {err}") from None


def without(ds: DatasetConfig, drop: Collection[str]) -> DatasetConfig:
    """`ds` with the `drop`ped input modalities left out, validated again (contrastive still needs two inputs, ...)."""
    kept = {
        m: field for m, field in ds.inputs.items() if m not in drop or m in ds.privileged
    }  # privileged: never read here
    if kept == ds.inputs:
        return ds
    where = f"--drop {' --drop '.join(drop)}: dataset {ds.name}"
    if not kept:
        raise RecipeError(f"{where} has no input left (its inputs: {', '.join(ds.inputs)})")
    try:
        return DatasetConfig.model_validate(ds.model_dump() | {"inputs": kept})
    except ValidationError as err:
        raise RecipeError(
            f"{where} cannot be evaluated without {', '.join(sorted(set(ds.inputs) - set(kept)))}: "
            + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        ) from None


def scored(ds: DatasetConfig) -> bool:
    return ds.eval_shards is not None and bool(ds.metrics)


def _examples(
    recipe: Recipe, d: int, ds: DatasetConfig, tokenizer: MultimodalTokenizer, counts: dict[str, int]
) -> Iterator:
    """(token sequence, reference text) for each decodable held-out sample of dataset `d`."""
    for raw in eval_samples(expand_shards(ds.eval_shards)):
        try:
            ex = decode_example(raw, d, ds, recipe.tokenizer, training=False)  # privileged inputs (OS-MD) left out
        except BadSample:
            counts["skipped"] += 1
            continue
        counts["samples"] += 1
        yield tokenizer(ex), ex.target


def _batches(examples: Iterator, tokenizer: MultimodalTokenizer, batch_size: int) -> Batches:
    """(batch, reference texts) of up to `batch_size` samples, one a row."""
    while chunk := list(islice(examples, batch_size)):
        seqs, refs = zip(*chunk)
        yield collate_rows(complete_rows([[s] for s in seqs]), tokenizer.patch_dims, BOS_ID), refs


def subset_batches(
    recipe: Recipe, d: int, ds: DatasetConfig, tokenizer: MultimodalTokenizer, samples: int, batch_size: int
) -> list:
    """The first `samples` decodable held-out samples of dataset `d`, as (batch, reference texts): the same every call."""
    counts = {"samples": 0, "skipped": 0}
    batches = list(_batches(islice(_examples(recipe, d, ds, tokenizer, counts), samples), tokenizer, batch_size))
    if not batches:
        raise RecipeError(f"dataset {ds.name}: no decodable sample in eval_shards ({counts['skipped']} skipped)")
    return batches


def score(
    ds: DatasetConfig, model: UnifiedModel, batches: Batches, tokenizer: MultimodalTokenizer, max_new_tokens: int
) -> dict[str, float]:
    """{metric: value} for the metrics `ds` names, from one pass of the model over its batches: its objective's `score`."""
    return objective(ds.objective).score(model, batches, ds, tokenizer, max_new_tokens)


@torch.no_grad()
def evaluate(recipe: Recipe, model: UnifiedModel, batch_size: int = 64, drop: Collection[str] = ()) -> dict[str, dict]:
    """{dataset: {modality, task, objective, dropped, metrics: {name: value}, samples, skipped}}
    for the datasets with eval_shards and a metric (mim has none), with the `drop`ped input modalities left out.
    """
    absent = [m for m in drop if not any(m in ds.inputs for ds in recipe.data.datasets)]
    if absent:
        raise RecipeError(f"--drop {', '.join(absent)}: no dataset of recipe {recipe.name} has such an input")
    evaluated = [without(ds, drop) if scored(ds) else ds for ds in recipe.data.datasets]
    tokenizer = MultimodalTokenizer(recipe.tokenizer, evaluated, recipe.seed)
    results = {}
    for d, (ds, used) in enumerate(zip(recipe.data.datasets, evaluated)):
        if not scored(ds):
            continue
        counts = {"samples": 0, "skipped": 0}
        batches = _batches(_examples(recipe, d, used, tokenizer, counts), tokenizer, batch_size)
        first = next(batches, None)
        if first is None:
            raise RecipeError(f"dataset {ds.name}: no decodable sample in eval_shards ({counts['skipped']} skipped)")
        metrics = score(used, model, chain([first], batches), tokenizer, recipe.train.max_new_tokens)
        results[ds.name] = {
            "modality": ds.modality,
            "task": ds.task,
            "objective": ds.objective,
            "dropped": sorted(set(ds.inputs) - set(used.inputs)),
            "metrics": metrics,
            **counts,
        }
    return results
