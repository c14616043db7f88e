"""The held-out metrics as pure functions of predictions and references.

Each scores a whole eval set at once, the way papers report them: WER and
BLEU are corpus-level (edits, n-gram counts and lengths summed over the set,
then divided), not means of per-sentence scores. An empty set is an error,
never a score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sacrebleu.metrics import BLEU


def normalize(text: str) -> str:
    """Whitespace collapsed: the decoder's spacing is not an error."""
    return " ".join(text.split())


def _nonempty(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what} of an empty eval set")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize`."""
    _nonempty(len(references), "exact match")
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(references)


def accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of positions where `predicted` equals `truth` (ids, labels or booleans)."""
    _nonempty(truth.numel(), "accuracy")
    return int((predicted == truth).sum()) / truth.numel()  # counted exactly, not a float32 mean


def edit_distance(hypothesis: Sequence[str], reference: Sequence[str]) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions turning one into the other."""
    previous = list(range(len(hypothesis) + 1))  # distances from the empty reference prefix
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (hyp != ref)))
        previous = current
    return previous[-1]


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Word edits over reference words, both summed over the set (as jiwer and the ASR papers compute it).

    Words are split on whitespace; 0 is perfect, and insertions can take it above 1.
    """
    pairs = [(h.split(), r.split()) for h, r in zip(hypotheses, references, strict=True)]
    words = sum(len(r) for _, r in pairs)
    _nonempty(words, "word error rate")
    return sum(edit_distance(h, r) for h, r in pairs) / words


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU's corpus BLEU (0-100) with its defaults (13a tokenizer, exp smoothing), one reference each."""
    _nonempty(len(references), "BLEU")
    if len(hypotheses) != len(references):
        raise ValueError(f"BLEU: {len(hypotheses)} hypotheses for {len(references)} references")
    return BLEU().corpus_score(list(hypotheses), [list(references)]).score


def recall_at_k(similarity: torch.Tensor, k: int) -> float:
    """similarity [queries, candidates], query i's true candidate being i: the fraction ranked in the top k.

    A candidate ties with the true one only if its similarity is equal; ties count
    in the true candidate's favour, so the result does not depend on sort order.
    """
    _nonempty(len(similarity), "recall@k")
    true = similarity.diagonal().unsqueeze(1)
    above = (similarity > true).sum(1)  # candidates ranked strictly above the true one
    return int((above < k).sum()) / len(similarity)
