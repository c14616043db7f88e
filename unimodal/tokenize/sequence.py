"""One token sequence per sample, and the batch the model sees.

Every modality becomes a run of tokens in one sequence: text as SentencePiece
ids, image/audio/video as flat patch vectors that the model's modality stems
project to d_model. The body only sees vectors, a modality id and a position.

Batch layout (all tensors, built in DataLoader workers by `collate`):

    enc_ids    long  [B, L]  text ids at text positions, 0 elsewhere
    modality   long  [B, L]  index into MODALITIES; 0 ("pad") at padding
    positions  long  [B, L]  position of the token within its sample
    enc_mask   bool  [B, L]  True at real tokens
    patches_<m> float [N_m, D_m]  for m in PATCH_MODALITIES: the patch vectors
               of every position where modality == m, in row-major [B, L]
               order (so `x[modality == m] = stem_m(patches_m)` places them)
    dec_in     long  [B, T]  BOS + target[:-1], pad id 0 after the end
    dec_out    long  [B, T]  target + EOS, IGNORE_INDEX after the end
    dataset    long  [B]     index of the sample's dataset in the recipe
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODALITIES = ("pad", "text", "image", "audio", "video")
PATCH_MODALITIES = ("image", "audio", "video")
IGNORE_INDEX = -100


@dataclass
class Segment:
    """A run of tokens of one modality: ids [n] for text, vectors [n, D] otherwise."""

    modality: str
    data: torch.Tensor

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class TokenSequence:
    """A tokenized sample: encoder segments in order, the text target, its dataset."""

    segments: list[Segment]
    target: torch.Tensor  # long [t], ends with EOS
    dataset: int

    @property
    def enc_len(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def dec_len(self) -> int:
        return len(self.target)


def collate(
    seqs: list[TokenSequence], patch_dims: dict[str, int], bos_id: int
) -> dict[str, torch.Tensor]:
    """Pad a list of sequences into the batch layout above."""
    b = len(seqs)
    enc_len = max(s.enc_len for s in seqs)
    dec_len = max(s.dec_len for s in seqs)
    enc_ids = torch.zeros(b, enc_len, dtype=torch.long)
    modality = torch.zeros(b, enc_len, dtype=torch.long)
    enc_mask = torch.zeros(b, enc_len, dtype=torch.bool)
    dec_in = torch.zeros(b, dec_len, dtype=torch.long)
    dec_out = torch.full((b, dec_len), IGNORE_INDEX, dtype=torch.long)
    patches: dict[str, list[torch.Tensor]] = {m: [] for m in PATCH_MODALITIES}
    for i, seq in enumerate(seqs):
        at = 0
        for seg in seq.segments:
            n = len(seg)
            modality[i, at : at + n] = MODALITIES.index(seg.modality)
            if seg.modality == "text":
                enc_ids[i, at : at + n] = seg.data
            else:
                patches[seg.modality].append(seg.data)
            at += n
        enc_mask[i, :at] = True
        t = seq.dec_len
        dec_out[i, :t] = seq.target
        dec_in[i, 0] = bos_id
        dec_in[i, 1:t] = seq.target[: t - 1]
    batch = {
        "enc_ids": enc_ids,
        "modality": modality,
        "positions": torch.arange(enc_len).expand(b, enc_len).contiguous(),
        "enc_mask": enc_mask,
        "dec_in": dec_in,
        "dec_out": dec_out,
        "dataset": torch.tensor([s.dataset for s in seqs], dtype=torch.long),
    }
    for m in PATCH_MODALITIES:
        rows = patches[m]
        batch[f"patches_{m}"] = (
            torch.cat(rows) if rows else torch.zeros(0, patch_dims[m])
        ).float()
    return batch
