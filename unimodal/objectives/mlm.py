"""mlm: masked text tokens predicted from the encoder by the tied LM head (MoMo, BERT).

Lay-out [prompt, inputs...], `mask_ratio` (BERT's 15% by default) of the text
input's tokens masked (unimodal/objectives/masking.py). Its masked tokens go
through the tied LM head in the model's one pass, after seq2seq's targets
(`lm_rows`); it has no head of its own. Held-out metric: accuracy, the masked
tokens predicted.
"""

from __future__ import annotations

from typing import Any

import torch

from unimodal.modalities.text import TEXT
from unimodal.objectives.masking import mask_inputs, own_tokens
from unimodal.objectives.metrics import accuracy
from unimodal.objectives.registry import Objective, objective_code

MLM = "mlm"


def check(ds: Any) -> None:
    if TEXT not in ds.inputs:
        raise ValueError(f"inputs: objective {MLM} masks text tokens and needs a text input")


def lay_out(prompt: Any, inputs: list[Any], mask_ratio: float, seed: int) -> list[Any]:
    return [prompt, *mask_inputs(inputs, lambda s: s.modality == TEXT, mask_ratio, seed)]


def masked_text(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """bool [B, L]: masked text tokens."""
    return batch["enc_masked"] & (batch["modality"] == model.modalities.index(TEXT))


def items(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flat [B * L] positions of the masked text tokens of mlm samples."""
    return (masked_text(model, batch) & own_tokens(batch, objective_code(MLM))).flatten().nonzero().squeeze(1)


def lm_rows(model: Any, batch: dict, at: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return memory.flatten(0, 1)[at], batch["enc_ids"].flatten()[at], batch["enc_sample"].flatten()[at]


def flops(cfg: Any, batch: dict[str, torch.Tensor], views: Any, modalities: tuple[str, ...]) -> int:
    """The tied LM head over the masked text tokens of mlm samples."""
    at = (batch["modality"].numpy() == modalities.index(TEXT)) & batch["enc_masked"].numpy()
    at &= (batch["objective"].numpy() == objective_code(MLM))[batch["enc_sample"].numpy().clip(min=0)]
    return 2 * cfg.d_model * cfg.vocab_size * int(at.sum())


def predict(model: Any, batch: dict, refs: tuple, tokenizer: Any, max_new_tokens: int) -> tuple[torch.Tensor, ...]:
    """The LM head's argmax at each masked text token, and the true id."""
    memory, _ = model.encode(batch)
    at = masked_text(model, batch)
    return model.lm_head(memory[at]).argmax(-1).cpu(), batch["enc_ids"][at].cpu()


def measure(predictions: list[tuple[torch.Tensor, ...]], ds: Any) -> dict[str, float]:
    predicted, truth = zip(*predictions)
    return {"accuracy": accuracy(torch.cat(predicted), torch.cat(truth))}


OBJECTIVE = Objective(
    name=MLM,
    lay_out=lay_out,
    check=check,
    mask_ratio=0.15,
    metrics=("accuracy",),
    default_metric="accuracy",
    items=items,
    lm_rows=lm_rows,
    flops=flops,
    predict=predict,
    measure=measure,
)
