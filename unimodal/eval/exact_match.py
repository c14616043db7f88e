"""Held-out evaluation per dataset: greedy decoding and exact match for seq2seq,
the metrics of `unimodal/eval/objectives.py` for the encoder-only objectives.

Reads each dataset's `eval_shards` once, in order, through the same decode and
tokenize path as training (masks drawn as in epoch 0, itm negatives paired
within each eval batch), and loads plain weights (`model.safetensors`), so
evaluation needs neither DeepSpeed nor pickle.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import islice
from pathlib import Path

import torch

from unimodal.config import Recipe, expand_shards
from unimodal.data.decode import BadSample, decode_example
from unimodal.data.stream import eval_samples
from unimodal.eval.objectives import Batches, masked_token_accuracy, match_accuracy, recall_at_1
from unimodal.model import UnifiedModel
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import pair_negatives
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID, EOS_ID
from unimodal.train.checkpoint import load_weights


def normalize(text: str) -> str:
    return " ".join(text.split())


def load_model(weights_dir: str | Path) -> UnifiedModel:
    state, cfg = load_weights(Path(weights_dir))
    model = UnifiedModel(cfg)
    model.load_state_dict(state)
    return model.eval()


def _examples(recipe: Recipe, d: int, tokenizer: MultimodalTokenizer, skipped: list[int]):
    """(token sequence, reference text) for each decodable held-out sample of dataset `d`."""
    ds = recipe.data.datasets[d]
    for raw in eval_samples(expand_shards(ds.eval_shards)):
        try:
            ex = decode_example(raw, d, ds, recipe.tokenizer)
        except BadSample:
            skipped[0] += 1
            continue
        yield tokenizer(ex), ex.target


def _batches(examples: Iterator, tokenizer: MultimodalTokenizer, batch_size: int) -> Batches:
    """(batch, reference texts) of up to `batch_size` samples, one a row."""
    while chunk := list(islice(examples, batch_size)):
        seqs, refs = zip(*chunk)
        yield collate_rows(pair_negatives([[s] for s in seqs]), tokenizer.patch_dims, BOS_ID), refs


def exact_match(model: UnifiedModel, batches: Batches, tokenizer: MultimodalTokenizer, max_new_tokens: int) -> tuple[float, int]:
    correct = total = 0
    for batch, refs in batches:
        ids = model.generate(batch, BOS_ID, EOS_ID, max_new_tokens)
        for row, ref in zip(ids.tolist(), refs):
            correct += normalize(tokenizer.text.decode(row)) == normalize(ref)
        total += len(refs)
    return correct / total if total else 0.0, total


@torch.no_grad()
def evaluate(recipe: Recipe, model: UnifiedModel, batch_size: int = 64) -> dict[str, dict]:
    """{dataset: {modality, task, metric, accuracy, samples, skipped}} for datasets with eval_shards.

    `accuracy` holds the dataset's metric, a fraction; mim datasets have none and are left out.
    """
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    metrics = {
        "seq2seq": ("exact_match", partial(exact_match, tokenizer=tokenizer, max_new_tokens=recipe.train.max_new_tokens)),
        "mlm": ("masked_token_accuracy", masked_token_accuracy),
        "contrastive": ("recall_at_1", recall_at_1),
        "itm": ("match_accuracy", match_accuracy),
    }
    results = {}
    for d, ds in enumerate(recipe.data.datasets):
        if ds.eval_shards is None or ds.objective not in metrics:
            continue
        skipped = [0]
        batches = _batches(_examples(recipe, d, tokenizer, skipped), tokenizer, batch_size)
        metric, score = metrics[ds.objective]
        value, total = score(model, batches)
        results[ds.name] = {
            "modality": ds.modality,
            "task": ds.task,
            "metric": metric,
            "accuracy": value,
            "samples": total,
            "skipped": skipped[0],
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    rows = [("dataset", "modality", "task", "metric", "value")]
    rows += [(n, r["modality"], r["task"], r["metric"], f"{r['accuracy']:.3f}") for n, r in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
