"""The objective record and its registry: everything one training objective owns, found by its name.

An objective runs in several layers of the package: the recipe schema checks
a dataset against it, the tokenizer lays its samples out, the model builds its
heads and scores its loss, the FLOPs counter counts its heads, the evaluator
scores it. Its record holds each of those parts as a plain function that
receives what it works on as arguments (the dataset's config, the segments,
the model, the batch, the encoder's states), so an objective's module imports
only torch and the ground of the package, and every layer can read the
registry without importing upward.

The built-in objectives are registered by `unimodal.objectives` in this
order; a user module registers more with `register_objective` at import (a
recipe's `plugins`). A sample's objective travels in the batch as its index
in registration order (`objective_code`), so every process registers the
same objectives in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# (batch, reference texts) pairs of one dataset's held-out samples, as the evaluator reads them
Batches = Iterable[tuple[dict[str, torch.Tensor], tuple]]


def _fits_any(ds: Any) -> None:
    """The default `check`: every dataset fits."""


@dataclass(frozen=True)
class Objective:
    """One objective's parts. Only `name` and `lay_out` are required; a part left None is not run.

    Signatures (the model is a UnifiedModel, `cfg` its ModelConfig, `ds` a DatasetConfig,
    `terms` the step's LossTerms; a model's `modalities` are the names `batch["modality"]` indexes):
        check(ds)                                        raise ValueError("<field>: ...") if ds cannot train it
        lay_out(prompt, inputs, mask_ratio, seed) -> segments     encoder segments of one sample (tokenizer)
        complete_rows(rows) -> rows                      once a batch's samples are known (e.g. itm's negatives)
        heads[attr](cfg) -> nn.Module                    the model's modules, set as model.<attr> in this order
        items(model, batch) -> items                     what it scores, found before the encoder runs
        lm_rows(model, batch, items, memory) -> (states [k, d], labels [k], owner [k])
                                                         rows for the model's one pass through the tied LM head
        loss(model, batch, items, memory, terms)         adds its item losses to `terms`
        flops(cfg, batch, views, modalities) -> int      forward FLOPs of its heads (unimodal/model/flops.py)
        predict(model, batch, refs, tokenizer, max_new_tokens) -> predictions
                                                         what its metrics are computed from, for one held-out batch
                                                         and its reference texts: picklable, tensors on the host
        measure(predictions, ds) -> {metric: value}      the metrics `ds` names, from `predict`'s output for every
                                                         batch of the eval set, in batch order (a list)
    `score` is `measure` over `predict` of each batch: one pass by the evaluator, or batches predicted on several
    ranks, gathered and measured once (validation during training, unimodal/train/validate.py), with equal numbers.
    A head whose class defines `reset_parameters` has it called after the model's own init.
    """

    name: str
    lay_out: Callable[[Any, list[Any], float | None, int], list[Any]]
    target: bool = False  # the dataset names a text `target` the decoder writes (and may have privileged inputs)
    check: Callable[[Any], None] = _fits_any
    mask_ratio: float | None = None  # default of objective_options.mask_ratio; None: the objective takes none
    # metric names eval can report; one ending in "@K" stands for that name with any K >= 1 (recall@K)
    metrics: tuple[str, ...] = ()
    default_metric: str | None = None  # the metric of a dataset that names none; None: no metric by default
    heads: dict[str, Callable[[Any], nn.Module]] = field(default_factory=dict)
    complete_rows: Callable[[list[list[Any]]], list[list[Any]]] | None = None
    items: Callable[[nn.Module, dict[str, torch.Tensor]], Any] | None = None
    lm_rows: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    loss: Callable[..., None] | None = None
    flops: Callable[..., int] | None = None
    predict: Callable[..., Any] | None = None
    measure: Callable[[list[Any], Any], dict[str, float]] | None = None

    def score(self, model: nn.Module, batches: Batches, ds: Any, tokenizer: Any, max_new_tokens: int) -> dict:
        """{metric: value} for the metrics `ds` names, from one pass of the model over its held-out batches."""
        return self.measure([self.predict(model, b, refs, tokenizer, max_new_tokens) for b, refs in batches], ds)


_OBJECTIVES: dict[str, Objective] = {}
_CODES: dict[str, int] = {}


def fits(metric: str, spec: str) -> bool:
    """Whether `metric` is the name `spec` stands for (`recall@5` fits `recall@K`)."""
    if spec.endswith("@K"):
        return re.fullmatch(re.escape(spec[:-1]) + "[1-9][0-9]*", metric) is not None
    return metric == spec


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to the registry (after those registered before it); a name or head taken already is refused."""
    if objective.name in _OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is registered already")
    taken = {head: o.name for o in _OBJECTIVES.values() for head in o.heads}
    clash = [head for head in objective.heads if head in taken]
    if clash:
        raise ValueError(f"objective {objective.name!r}: head {clash[0]!r} is objective {taken[clash[0]]!r}'s")
    if objective.default_metric is not None and not any(fits(objective.default_metric, s) for s in objective.metrics):
        raise ValueError(f"objective {objective.name!r}: default_metric {objective.default_metric!r} not in metrics")
    if objective.metrics and (objective.predict is None or objective.measure is None):
        raise ValueError(
            f"objective {objective.name!r}: metrics {', '.join(objective.metrics)} but no predict and measure to score them"
        )
    _CODES[objective.name] = len(_OBJECTIVES)
    _OBJECTIVES[objective.name] = objective
    return objective


def objectives() -> tuple[Objective, ...]:
    """Every registered objective, in registration order."""
    return tuple(_OBJECTIVES.values())


def objective(name: str) -> Objective:
    """The registered objective called `name`; ValueError naming the known ones otherwise."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (known: {', '.join(map(repr, _OBJECTIVES))})")
    return _OBJECTIVES[name]


def objective_code(name: str) -> int:
    """What `batch["objective"]` holds for a sample of this objective: its place in registration order."""
    return _CODES[name]


def known_metric(metric: str) -> str:
    """`metric` if some registered objective can report it; ValueError naming every metric otherwise."""
    specs = dict.fromkeys(s for o in _OBJECTIVES.values() for s in o.metrics)
    if not any(fits(metric, s) for s in specs):
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(specs)})")
    return metric
