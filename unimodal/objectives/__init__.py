"""The objective registry: one module per objective, each owning every part of it (unimodal/objectives/registry.py).

    seq2seq      the decoder writes the text `target` from the encoded inputs (UnIVAL, MultiModel)
    mlm          masked text tokens predicted from the encoder by the tied LM head (MoMo)
    mim          masked patches' normalised pixels regressed from the encoder (MoMo, SimMIM)
    contrastive  the two inputs encoded apart, pooled, InfoNCE over the step's pairs on all ranks (CLIP)
    itm          the two inputs encoded together: matched, or mismatched with another sample's second input

Registered here in this order (a batch's `objective` codes follow it); a user
module adds its own with `register_objective(Objective(...))` at import.
"""

from unimodal.objectives import contrastive, itm, mim, mlm, seq2seq
from unimodal.objectives.registry import (
    Batches,
    Objective,
    known_metric,
    objective,
    objective_code,
    objectives,
    register_objective,
)

for _builtin in (seq2seq, mlm, mim, contrastive, itm):
    register_objective(_builtin.OBJECTIVE)

__all__ = [
    "Batches",
    "Objective",
    "known_metric",
    "objective",
    "objective_code",
    "objectives",
    "register_objective",
]
