"""OS-MD, one-stage modality distillation (recipes/osmd): what a sample with privileged inputs trains.

A dataset's privileged inputs (`DatasetConfig.privileged`) are present in
training only. Its samples are laid out (unimodal/tokenize/objectives.py) as

    view 0  [prompt, ordinary inputs, k hallucination tokens]   all there is at test time
    view 1  [privileged inputs]                                  encoded apart

The hallucination network is the shared encoder reading the ordinary inputs
from k learned queries (the mask embedding at k positions): its states there
are the hallucinated privileged features. The fusion is the decoder's
cross-attention over the ordinary and the privileged (real or hallucinated)
features. Three terms, by `DistillOptions.train`:

    student  CE of the target decoded from view 0: ordinary + hallucinated features
             (unimodal/model/unified.py, the usual seq2seq term)
    teacher  CE of the target decoded from the ordinary and the real privileged features
             (view 0 without the hallucination tokens, and view 1): the same decoder
             learns to read privileged features, so hallucinated ones that resemble them
             carry what it learnt there
    distill  weight x (1 - cosine) between the sample's mean hallucinated feature and
             its mean privileged feature, the privileged side detached

`joint` (OS-MD) sums all three into one loss, one backward, one optimiser
step. The two-stage baseline trains teacher + distill (`hallucinate`), then
the student term alone with the encoder frozen (`fuse`).

The privileged side is detached because the teacher CE alone should shape
it: pulled toward what the ordinary inputs can predict, it would lose the
information the hallucination is there to recover (and a constant would cost
the distillation nothing). Cosine of means, not per-token MSE: k tokens
against however many the privileged input has need no alignment, and the
direction of a mean is scale-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unimodal.config import DatasetConfig
from unimodal.tokenize.sequence import IGNORE_INDEX


@dataclass
class DistillPlan:
    """Per dataset of the recipe, which terms its samples train (index: the batch's `dataset`)."""

    student: torch.Tensor  # bool [D]: the seq2seq CE through view 0 (every dataset but a `hallucinate` one)
    teacher: torch.Tensor  # bool [D]: CE through the real privileged features
    weight: torch.Tensor  # float [D]: lambda of the distillation, 0 where none

    @classmethod
    def of(cls, datasets: list[DatasetConfig]) -> DistillPlan | None:
        """None when no dataset trains from its privileged inputs (no extra decoder pass then)."""
        learns = [bool(d.privileged) and d.distill.train != "fuse" for d in datasets]
        if not any(learns):
            return None
        return cls(
            student=torch.tensor([not (on and d.distill.train == "hallucinate") for d, on in zip(datasets, learns)]),
            teacher=torch.tensor(learns),
            weight=torch.tensor([d.distill.weight if on else 0.0 for d, on in zip(datasets, learns)]),
        )

    def of_samples(self, dataset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """student, teacher and weight of each sample [N], on the batch's device."""
        return tuple(t.to(dataset.device)[dataset] for t in (self.student, self.teacher, self.weight))


def sample_means(
    memory: torch.Tensor, at: torch.Tensor, sample: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean encoder state [N, d] (fp32) of each sample's tokens where `at` [B, L], and their counts [N]."""
    slot = torch.where(at, sample, n).flatten()
    sums = memory.new_zeros(n + 1, memory.shape[-1], dtype=torch.float32).index_add_(
        0, slot, memory.flatten(0, 1).float()
    )
    counts = torch.zeros(n + 1, device=memory.device).index_add_(0, slot, torch.ones_like(slot, dtype=torch.float32))
    return sums[:n] / counts[:n].clamp(min=1).unsqueeze(-1), counts[:n]


def distillation(
    memory: torch.Tensor, batch: dict, hallucinated: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """weight x (1 - cos) of each sample's mean hallucinated and (detached) privileged feature [N], and its owner [N]."""
    n, sample = len(weight), batch["enc_sample"]
    fake, n_fake = sample_means(memory, hallucinated, sample, n)
    real, n_real = sample_means(memory, batch["enc_view"] == 1, sample, n)
    loss = weight * (1 - F.cosine_similarity(fake, real.detach(), dim=-1))
    owner = torch.arange(n, device=weight.device)
    return loss, torch.where((weight > 0) & (n_fake > 0) & (n_real > 0), owner, -1)


def teacher_targets(dec: dict, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's sample numbers with only teacher samples kept (-1 elsewhere), and each target token's owner."""
    queries = torch.where((dec["dec_sample"] >= 0) & teacher[dec["dec_sample"].clamp(min=0)], dec["dec_sample"], -1)
    owner = torch.where(dec["dec_out"] != IGNORE_INDEX, queries, -1)
    return queries, owner.flatten()
