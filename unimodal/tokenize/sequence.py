"""One token sequence per sample, and the batch the model sees.

Every modality becomes a run of tokens in one sequence: text as SentencePiece
ids, image/audio/video as flat patch vectors that the model's modality stems
project to d_model. The body only sees vectors, a modality id and a position.

Batch layout (all tensors, built in DataLoader workers by `collate_rows`).
A row holds one sample (padded batches) or several back to back (packed
batches); N samples in all, numbered row-major:

    enc_ids    long  [B, L]  text ids at text positions, 0 elsewhere
    modality   long  [B, L]  index into MODALITIES; 0 ("pad") at padding
    positions  long  [B, L]  position of the token within its sample's view
    enc_mask   bool  [B, L]  True at real tokens
    enc_sample long  [B, L]  the token's sample number, -1 at padding
    enc_view   long  [B, L]  1 in the second view of a contrastive or itm sample, else 0;
               each (sample, view) is encoded alone, as if it were a sample of its own
    enc_masked bool  [B, L]  True where the model puts its mask embedding (mlm, mim): the ids
               and patches there stay the originals, which mlm and mim predict
    patches_<m> [N_m, D_m]  for m in PATCH_MODALITIES: the patch vectors (uint8 pixels, float log-mel)
               of every position where modality == m, in row-major [B, L]
               order (so `x[modality == m] = stem_m(patches_m)` places them)
    dec_in     long  [B, T]  per sample BOS + target[:-1]; pad id 0 after the row's end
    dec_out    long  [B, T]  per sample target + EOS; IGNORE_INDEX after the row's end
    dec_positions long [B, T] position within the sample's target
    dec_sample long  [B, T]  the token's sample number, -1 at padding
               (the dec_* tensors hold seq2seq targets only: T is 0 in a batch without any)
    dataset    long  [N]     index of each sample's dataset in the recipe
    objective  long  [N]     index of each sample's objective in OBJECTIVES
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from unimodal.config import OBJECTIVES

MODALITIES = ("pad", "text", "image", "audio", "video")
PATCH_MODALITIES = ("image", "audio", "video")
PATCH_DTYPES = {"image": torch.uint8, "audio": torch.float32, "video": torch.uint8}
IGNORE_INDEX = -100
_CODE = {m: i for i, m in enumerate(MODALITIES)}
_OBJECTIVE = {o: i for i, o in enumerate(OBJECTIVES)}


@dataclass
class Segment:
    """A run of tokens of one modality: ids [n] for text, vectors [n, D] otherwise.

    `view` numbers the encoding it belongs to (contrastive and itm samples have two);
    `masked` (bool [n]) marks tokens the model must predict without seeing.
    """

    modality: str
    data: torch.Tensor
    view: int = 0
    masked: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class TokenSequence:
    """A tokenized sample: encoder segments in order (a view's segments together),
    the text target (empty unless seq2seq), its dataset and objective.

    Treat it as immutable: the lengths are computed once (the loader asks for
    them again for every sample it adds to a token-budget batch).
    """

    segments: list[Segment]
    target: torch.Tensor  # long [t], ends with EOS; [0] for objectives other than seq2seq
    dataset: int
    objective: str = "seq2seq"

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


def _view_lengths(seqs: list[TokenSequence]) -> torch.Tensor:
    """Tokens of each (sample, view) in turn: positions restart at each."""
    lengths: list[int] = []
    for seq in seqs:
        view = None
        for seg in seq.segments:
            if seg.view != view:
                lengths.append(0)
                view = seg.view
            lengths[-1] += len(seg)
    return torch.tensor(lengths, dtype=torch.long)


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
    views: list[int] = []
    masked: list[torch.Tensor | None] = []
    text: list[torch.Tensor] = []
    patches: dict[str, list[torch.Tensor]] = {m: [] for m in PATCH_MODALITIES}
    for seq in seqs:
        for seg in seq.segments:
            codes.append(_CODE[seg.modality])
            runs.append(seg.data.shape[0])
            views.append(seg.view)
            masked.append(seg.masked)
            (text if seg.modality == "text" else patches[seg.modality]).append(seg.data)

    ids = torch.arange(len(seqs))
    enc_mask = torch.arange(enc_len) < enc_row[:, None]
    modality = torch.zeros(b, enc_len, dtype=torch.long)
    modality[enc_mask] = torch.repeat_interleave(torch.tensor(codes, dtype=torch.long), torch.tensor(runs, dtype=torch.long))
    enc_ids = torch.zeros(b, enc_len, dtype=torch.long)
    if text:
        enc_ids[modality == _CODE["text"]] = torch.cat(text).to(torch.long)
    positions = torch.zeros(b, enc_len, dtype=torch.long)
    positions[enc_mask] = _restarting_arange(_view_lengths(seqs) if any(views) else enc_lens)
    enc_sample = torch.full((b, enc_len), -1, dtype=torch.long)
    enc_sample[enc_mask] = torch.repeat_interleave(ids, enc_lens)
    enc_view = torch.zeros(b, enc_len, dtype=torch.long)
    if any(views):
        enc_view[enc_mask] = torch.repeat_interleave(torch.tensor(views), torch.tensor(runs, dtype=torch.long))
    enc_masked = torch.zeros(b, enc_len, dtype=torch.bool)
    if any(m is not None for m in masked):
        none = torch.zeros(max(runs), dtype=torch.bool)
        enc_masked[enc_mask] = torch.cat([none[:n] if m is None else m for m, n in zip(masked, runs)])

    dec_mask = torch.arange(dec_len) < dec_row[:, None]
    targets = [s.target.to(torch.long) for s in seqs if s.dec_len]  # seq2seq samples only
    dec_out = torch.full((b, dec_len), IGNORE_INDEX, dtype=torch.long)
    bos = torch.tensor([bos_id], dtype=torch.long)
    dec_in = torch.zeros(b, dec_len, dtype=torch.long)
    if targets:
        dec_out[dec_mask] = torch.cat(targets)
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
        "enc_view": enc_view,
        "enc_masked": enc_masked,
        "dec_in": dec_in,
        "dec_out": dec_out,
        "dec_positions": dec_positions,
        "dec_sample": dec_sample,
        "dataset": dataset,
        "objective": torch.tensor([_OBJECTIVE[s.objective] for s in seqs], dtype=torch.long),
    }
    for m in PATCH_MODALITIES:
        rows = patches[m]
        if rows:
            batch[f"patches_{m}"] = torch.cat(rows)  # uint8 pixels, float log-mel: as the patchers made them
        else:
            batch[f"patches_{m}"] = torch.zeros(0, patch_dims[m], dtype=PATCH_DTYPES[m])
    return batch
