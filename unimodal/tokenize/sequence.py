"""One token sequence per sample, and the batch the model sees.

Every modality becomes a run of tokens in one sequence: text as SentencePiece
ids, image/audio/video as flat patch vectors that the model's modality stems
project to d_model. The body only sees vectors, a modality id and a position.

Batch layout (all tensors, built in DataLoader workers by `collate_rows`).
A row holds one sample (padded batches) or several back to back (packed
batches); N samples in all, numbered row-major:

    enc_ids    long  [B, L]  text ids at text positions, 0 elsewhere
    modality   long  [B, L]  index into MODALITIES; 0 ("pad") at padding
    positions  long  [B, L]  position of the token within its sample
    enc_mask   bool  [B, L]  True at real tokens
    enc_sample long  [B, L]  the token's sample number, -1 at padding
    patches_<m> [N_m, D_m]  for m in PATCH_MODALITIES: the patch vectors (uint8 pixels, float log-mel)
               of every position where modality == m, in row-major [B, L]
               order (so `x[modality == m] = stem_m(patches_m)` places them)
    dec_in     long  [B, T]  per sample BOS + target[:-1]; pad id 0 after the row's end
    dec_out    long  [B, T]  per sample target + EOS; IGNORE_INDEX after the row's end
    dec_positions long [B, T] position within the sample's target
    dec_sample long  [B, T]  the token's sample number, -1 at padding
    dataset    long  [N]     index of each sample's dataset in the recipe
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

MODALITIES = ("pad", "text", "image", "audio", "video")
PATCH_MODALITIES = ("image", "audio", "video")
PATCH_DTYPES = {"image": torch.uint8, "audio": torch.float32, "video": torch.uint8}
IGNORE_INDEX = -100
_CODE = {m: i for i, m in enumerate(MODALITIES)}


@dataclass
class Segment:
    """A run of tokens of one modality: ids [n] for text, vectors [n, D] otherwise."""

    modality: str
    data: torch.Tensor

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class TokenSequence:
    """A tokenized sample: encoder segments in order, the text target, its dataset.

    Treat it as immutable: the lengths are computed once (the loader asks for
    them again for every sample it adds to a token-budget batch).
    """

    segments: list[Segment]
    target: torch.Tensor  # long [t], ends with EOS
    dataset: int

    @cached_property
    def enc_len(self) -> int:
        return sum(s.data.shape[0] for s in self.segments)

    @cached_property
    def dec_len(self) -> int:
        return self.target.shape[0]


def _restarting_arange(lengths: torch.Tensor) -> torch.Tensor:
    """0..n-1 for each n in `lengths`, concatenated: positions that restart at every sample."""
    starts = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    return torch.arange(int(lengths.sum())) - starts


def collate(
    seqs: list[TokenSequence], patch_dims: dict[str, int], bos_id: int
) -> dict[str, torch.Tensor]:
    """Pad a list of sequences into the batch layout above, one sample a row."""
    return collate_rows([[s] for s in seqs], patch_dims, bos_id)


def collate_rows(
    rows: list[list[TokenSequence]], patch_dims: dict[str, int], bos_id: int, min_enc_len: int = 0
) -> dict[str, torch.Tensor]:
    """Lay rows of samples out as one batch: each row holds its samples back to back.

    A row of one sample is a padded batch; a row of several is a packed one,
    and `enc_sample`/`dec_sample` keep its samples apart in attention.
    Per sample only lists are built; the tensors are filled once per batch
    (row-major boolean-mask assignment places runs exactly as per-row slices would).

    The tensors are built in ordinary memory on purpose. A DataLoader worker
    hands them over through shared memory, and the copy there happens in the
    worker queue's feeder thread without the GIL, overlapped with the next
    batch; building them in shared memory directly (as default_collate does)
    saves that copy but moves the page faults of fresh shared pages onto the
    worker's critical path, which measured slower with bench/loader.py.
    """
    seqs = [s for row in rows for s in row]
    b = len(rows)
    enc_row = torch.tensor([sum(s.enc_len for s in row) for row in rows], dtype=torch.long)
    dec_row = torch.tensor([sum(s.dec_len for s in row) for row in rows], dtype=torch.long)
    enc_lens = torch.tensor([s.enc_len for s in seqs], dtype=torch.long)
    dec_lens = torch.tensor([s.dec_len for s in seqs], dtype=torch.long)
    enc_len, dec_len = max(int(enc_row.max()), min_enc_len), int(dec_row.max())
    codes: list[int] = []
    runs: list[int] = []
    text: list[torch.Tensor] = []
    patches: dict[str, list[torch.Tensor]] = {m: [] for m in PATCH_MODALITIES}
    for seq in seqs:
        for seg in seq.segments:
            codes.append(_CODE[seg.modality])
            runs.append(seg.data.shape[0])
            (text if seg.modality == "text" else patches[seg.modality]).append(seg.data)

    ids = torch.arange(len(seqs))
    enc_mask = torch.arange(enc_len) < enc_row[:, None]
    modality = torch.zeros(b, enc_len, dtype=torch.long)
    modality[enc_mask] = torch.repeat_interleave(torch.tensor(codes, dtype=torch.long), torch.tensor(runs, dtype=torch.long))
    enc_ids = torch.zeros(b, enc_len, dtype=torch.long)
    if text:
        enc_ids[modality == _CODE["text"]] = torch.cat(text).to(torch.long)
    positions = torch.zeros(b, enc_len, dtype=torch.long)
    positions[enc_mask] = _restarting_arange(enc_lens)
    enc_sample = torch.full((b, enc_len), -1, dtype=torch.long)
    enc_sample[enc_mask] = torch.repeat_interleave(ids, enc_lens)

    dec_mask = torch.arange(dec_len) < dec_row[:, None]
    targets = [s.target.to(torch.long) for s in seqs]
    dec_out = torch.full((b, dec_len), IGNORE_INDEX, dtype=torch.long)
    dec_out[dec_mask] = torch.cat(targets)
    bos = torch.tensor([bos_id], dtype=torch.long)
    dec_in = torch.zeros(b, dec_len, dtype=torch.long)
    dec_in[dec_mask] = torch.cat([t for target in targets for t in (bos, target[:-1])])
    dec_positions = torch.zeros(b, dec_len, dtype=torch.long)
    dec_positions[dec_mask] = _restarting_arange(dec_lens)
    dec_sample = torch.full((b, dec_len), -1, dtype=torch.long)
    dec_sample[dec_mask] = torch.repeat_interleave(ids, dec_lens)
    dataset = torch.tensor([s.dataset for s in seqs], dtype=torch.long)
    batch = {
        "enc_ids": enc_ids,
        "modality": modality,
        "positions": positions,
        "enc_mask": enc_mask,
        "enc_sample": enc_sample,
        "dec_in": dec_in,
        "dec_out": dec_out,
        "dec_positions": dec_positions,
        "dec_sample": dec_sample,
        "dataset": dataset,
    }
    for m in PATCH_MODALITIES:
        rows = patches[m]
        if rows:
            batch[f"patches_{m}"] = torch.cat(rows)  # uint8 pixels, float log-mel: as the patchers made them
        else:
            batch[f"patches_{m}"] = torch.zeros(0, patch_dims[m], dtype=PATCH_DTYPES[m])
    return batch
