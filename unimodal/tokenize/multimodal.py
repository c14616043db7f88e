"""The modality-agnostic tokenizer: an Example in, one TokenSequence out.

The sequence is the task prompt as text, then each input in recipe order, laid
out for the dataset's objective (unimodal/tokenize/objectives.py); a seq2seq
target is text in the shared vocabulary, ended by EOS.
"""

from __future__ import annotations

import torch

from unimodal.config import DatasetConfig, TokenizerConfig
from unimodal.example import Example
from unimodal.modalities import modalities
from unimodal.modalities.text import TEXT
from unimodal.tokenize.objectives import lay_out, mask_seed, with_privileged
from unimodal.tokenize.sequence import Segment, TokenSequence
from unimodal.tokenize.text import EOS_ID, TextTokenizer

NO_TARGET = torch.zeros(0, dtype=torch.long)  # shared, never written to: objectives other than seq2seq


class MultimodalTokenizer:
    """`seed` (the recipe's) seeds the masks of mlm and mim samples, with their key and epoch."""

    def __init__(self, cfg: TokenizerConfig, datasets: list[DatasetConfig], seed: int = 0):
        self.cfg, self.datasets, self.seed = cfg, datasets, seed
        self.text = TextTokenizer(cfg.text)
        self.patchers = {m.name: m.patcher(cfg.settings(m.name)) for m in modalities() if m.patcher is not None}
        self.prompts = [self._ids(ds.task_prompt) for ds in datasets]
        mask_id = self.text.sp.piece_to_id("<mask>")
        # OS-MD: the hallucination tokens of datasets with privileged inputs
        self.slots = [torch.full((ds.distill.tokens,), mask_id, dtype=torch.long) for ds in datasets]

    @property
    def patch_dims(self) -> dict[str, int]:
        return {m: p.dim for m, p in self.patchers.items()}

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def _ids(self, text: str, limit: int | None = None) -> torch.Tensor:
        ids = self.text.encode(text)[: limit or self.cfg.max_text_tokens]
        return torch.tensor(ids, dtype=torch.long)

    def __call__(self, ex: Example) -> TokenSequence:
        ds = self.datasets[ex.dataset]
        inputs = [
            Segment(modality, self._ids(value) if modality == TEXT else self.patchers[modality](value))
            for modality, value in ex.inputs.items()
        ]
        prompt = Segment(TEXT, self.prompts[ex.dataset])
        seed = mask_seed(self.seed, ex.dataset, ex.key, ex.epoch)
        ordinary = [s for s in inputs if s.modality not in ds.privileged]
        segments = lay_out(ds.objective, prompt, ordinary, ds.objective_options.mask_ratio, seed)
        if ds.privileged:  # absent from held-out samples: then only the hallucination tokens stand in for them
            segments = with_privileged(
                segments, [s for s in inputs if s.modality in ds.privileged], self.slots[ex.dataset]
            )
        target = NO_TARGET
        if ex.target is not None:
            # at most max_text_tokens - 1 ids, then EOS (as `_ids` counts: a limit of 0 means no limit)
            ids = self.text.encode(ex.target)[: (self.cfg.max_text_tokens - 1) or self.cfg.max_text_tokens]
            target = torch.tensor(ids + [EOS_ID], dtype=torch.long)
        return TokenSequence(segments=segments, target=target, dataset=ex.dataset, objective=ds.objective)
