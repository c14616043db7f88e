"""seq2seq: the decoder writes the dataset's text `target` from the encoded inputs (UnIVAL, MultiModel).

Lay-out [prompt, inputs...]. Its target tokens go through the tied LM head in
the model's one pass, with mlm's masked tokens (`lm_rows`). Datasets with
privileged inputs (OS-MD) are seq2seq datasets: the model's
`_learn_from_privileged` (unimodal/model/distill.py) adds their terms, and a
`hallucinate` stage trains no CE through the hallucinated features here.
Held-out metrics on greedy decoding:
    exact_match  the generated text equals the target, whitespace-normalised
    wer          word error rate: word edits over reference words, over the whole eval set
    bleu         sacreBLEU's corpus BLEU, 0-100
"""

from __future__ import annotations

from typing import Any

import torch

from unimodal.objectives.metrics import bleu, exact_match, word_error_rate
from unimodal.objectives.registry import Objective

SEQ2SEQ = "seq2seq"
IGNORE_INDEX = -100  # dec_out after a row's end: no loss
DEC_PAD = {"dec_in": 0, "dec_out": IGNORE_INDEX, "dec_sample": -1, "dec_positions": 0}
TEXT_METRICS = {"exact_match": exact_match, "wer": word_error_rate, "bleu": bleu}


def lay_out(prompt: Any, inputs: list[Any], mask_ratio: float | None, seed: int) -> list[Any]:
    return [prompt, *inputs]


def decoder_inputs(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The dec_* tensors, and how many memory positions the decoder reads.

    A batch without seq2seq samples still runs the decoder, on one padding
    position against one memory position, so that its parameters are in the
    graph (at almost no cost); the memory is sliced either way, so every rank
    builds the same graph whatever its batch holds.
    """
    dec = {k: batch[k] for k in DEC_PAD}
    if dec["dec_in"].shape[1]:
        return dec, batch["enc_sample"].shape[1]
    return {k: v.new_full((v.shape[0], 1), DEC_PAD[k]) for k, v in dec.items()}, 1


def lm_rows(model: Any, batch: dict, items: None, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The decoder's states at every target token, the tokens, and their samples (-1: padding, or not trained)."""
    dec, span = decoder_inputs(batch)
    read = torch.where(batch["enc_view"] == 0, batch["enc_sample"], -1)  # view 1 of a seq2seq sample: privileged
    states = model.decoder_states(
        dec["dec_in"], memory[:, :span], read[:, :span], dec["dec_sample"], dec["dec_positions"]
    )
    labels = dec["dec_out"].flatten()
    owner = torch.where(labels != IGNORE_INDEX, dec["dec_sample"].flatten(), -1)
    if model.distill is not None:  # a `hallucinate` stage trains no CE through the hallucinated features
        student = model.distill.of_samples(batch["dataset"])[0]
        owner = torch.where(student[owner.clamp(min=0)], owner, -1)
    return states.flatten(0, 1), labels, owner


def predict(model: Any, batch: dict, refs: tuple, tokenizer: Any, max_new_tokens: int) -> tuple[list, list]:
    """Greedy decoding of each sample: (generated texts, target texts)."""
    ids = model.generate(batch, tokenizer.text.sp.bos_id(), tokenizer.text.sp.eos_id(), max_new_tokens)
    return [tokenizer.text.decode(row) for row in ids.tolist()], list(refs)


def measure(predictions: list[tuple[list, list]], ds: Any) -> dict[str, float]:
    """Every generated text against its target, over the whole eval set."""
    hypotheses = [h for batch, _ in predictions for h in batch]
    references = [r for _, batch in predictions for r in batch]
    return {m: TEXT_METRICS[m](hypotheses, references) for m in ds.metrics}


OBJECTIVE = Objective(
    name=SEQ2SEQ,
    lay_out=lay_out,
    target=True,
    metrics=tuple(TEXT_METRICS),
    default_metric="exact_match",
    lm_rows=lm_rows,
    predict=predict,
    measure=measure,
)
