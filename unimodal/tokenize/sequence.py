"""One token sequence per sample, and the batch the model sees.

Every modality becomes a run of tokens in one sequence: text as SentencePiece
ids, image/audio/video as flat patch vectors that the model's modality stems
project to d_model. The body only sees vectors, a modality id and a position.

Batch layout (all tensors, built in DataLoader workers by `collate_rows`).
A row holds one sample (padded batches) or several back to back (packed
batches); N samples in all, numbered row-major:

    enc_ids    long  [B, L]  text ids at text positions, 0 elsewhere
    modality   long  [B, L]  the token's modality code (unimodal.modalities.modality_codes): 0 at padding
    positions  long  [B, L]  position of the token within its sample's view
    enc_mask   bool  [B, L]  True at real tokens
    enc_sample long  [B, L]  the token's sample number, -1 at padding
    enc_view   long  [B, L]  1 in the second view of a contrastive or itm sample, else 0;
               each (sample, view) is encoded alone, as if it were a sample of its own
    enc_masked bool  [B, L]  True where the model puts its mask embedding (mlm, mim): the ids
               and patches there stay the originals, which mlm and mim predict
    patches_<m> [N_m, D_m]  for m in patch_modalities(): the patch vectors (uint8 pixels, float log-mel)
               of every position where modality == m, in row-major [B, L]
               order (so `x[modality == m] = stem_m(patches_m)` places them)
    dec_in     long  [B, T]  per sample BOS + target[:-1]; pad id 0 after the row's end
    dec_out    long  [B, T]  per sample target + EOS; IGNORE_INDEX after the row's end
    dec_positions long [B, T] position within the sample's target
    dec_sample long  [B, T]  the token's sample number, -1 at padding
               (the dec_* tensors hold seq2seq targets only: T is 0 in a batch without any)
    dataset    long  [N]     index of each sample's dataset in the recipe
    objective  long  [N]     each sample's objective, as `unimodal.objectives.objective_code` numbers it
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from unimodal.modalities import modalities, modality_codes
from unimodal.modalities.text import TEXT
from unimodal.objectives import objective_code
from unimodal.objectives.seq2seq import IGNORE_INDEX, SEQ2SEQ


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
    objective: str = SEQ2SEQ

    @cached_property
    def enc_len(self) -> int:
        return sum(s.data.shape[0] for s in self.segments)

    @cached_property
    def dec_len(self) -> int:
        return self.target.shape[0]


def _restarting_arange(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in `lengths`, concatenated: positions that restart at every sample."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts


def _view_lengths(seqs: list[TokenSequence]) -> np.ndarray:
    """Tokens of each (sample, view) in turn: positions restart at each."""
    lengths: list[int] = []
    for seq in seqs:
        view = None
        for seg in seq.segments:
            if seg.view != view:
                lengths.append(0)
                view = seg.view
            lengths[-1] += len(seg)
    return np.array(lengths, dtype=np.int64)


def collate(seqs: list[TokenSequence], patch_dims: dict[str, int], bos_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of sequences into the batch layout above, one sample a row."""
    return collate_rows([[s] for s in seqs], patch_dims, bos_id)


def collate_rows(
    rows: list[list[TokenSequence]], patch_dims: dict[str, int], bos_id: int, min_enc_len: int = 0
) -> dict[str, torch.Tensor]:
    """Lay rows of samples out as one batch: each row holds its samples back to back.

    A row of one sample is a padded batch; a row of several is a packed one,
    and `enc_sample`/`dec_sample` keep its samples apart in attention.
    Per sample only lists are built; the index arrays are filled once per
    batch (row-major boolean-mask assignment places runs exactly as per-row
    slices would), in numpy, whose calls cost a fraction of torch's on
    arrays this small, and become tensors without a copy.

    The tensors are built in ordinary memory on purpose. A DataLoader worker
    hands them over through shared memory, and the copy there happens in the
    worker queue's feeder thread without the GIL, overlapped with the next
    batch; building them in shared memory directly (as default_collate does)
    saves that copy but moves the page faults of fresh shared pages onto the
    worker's critical path, which measured slower with bench/loader.py.
    """
    seqs = [s for row in rows for s in row]
    b = len(rows)
    enc_row = np.array([sum(s.enc_len for s in row) for row in rows], dtype=np.int64)
    dec_row = np.array([sum(s.dec_len for s in row) for row in rows], dtype=np.int64)
    enc_lens = np.array([s.enc_len for s in seqs], dtype=np.int64)
    dec_lens = np.array([s.dec_len for s in seqs], dtype=np.int64)
    enc_len, dec_len = max(int(enc_row.max()), min_enc_len), int(dec_row.max())
    codes: list[int] = []
    runs: list[int] = []
    views: list[int] = []
    masked: list[torch.Tensor | None] = []
    text: list[torch.Tensor] = []
    code = modality_codes()
    patched = {m.name: m.patch_dtype for m in modalities() if m.patcher is not None}  # in stem order
    patches: dict[str, list[torch.Tensor]] = {m: [] for m in patched}
    for seq in seqs:
        for seg in seq.segments:
            codes.append(code[seg.modality])
            runs.append(seg.data.shape[0])
            views.append(seg.view)
            masked.append(seg.masked)
            (text if seg.modality == TEXT else patches[seg.modality]).append(seg.data)

    ids = np.arange(len(seqs))
    enc_mask = np.arange(enc_len) < enc_row[:, None]
    modality = np.zeros((b, enc_len), dtype=np.int64)
    modality[enc_mask] = np.repeat(codes, runs)
    enc_ids = np.zeros((b, enc_len), dtype=np.int64)
    if text:
        enc_ids[modality == code[TEXT]] = torch.cat(text).numpy()
    positions = np.zeros((b, enc_len), dtype=np.int64)
    positions[enc_mask] = _restarting_arange(_view_lengths(seqs) if any(views) else enc_lens)
    enc_sample = np.full((b, enc_len), -1, dtype=np.int64)
    enc_sample[enc_mask] = np.repeat(ids, enc_lens)
    enc_view = np.zeros((b, enc_len), dtype=np.int64)
    if any(views):
        enc_view[enc_mask] = np.repeat(views, runs)
    enc_masked = np.zeros((b, enc_len), dtype=bool)
    if any(m is not None for m in masked):
        enc_masked[enc_mask] = np.concatenate(
            [np.zeros(n, dtype=bool) if m is None else m.numpy() for m, n in zip(masked, runs)]
        )

    dec_mask = np.arange(dec_len) < dec_row[:, None]
    targets = [s.target.numpy() for s in seqs if s.dec_len]  # seq2seq samples only
    dec_out = np.full((b, dec_len), IGNORE_INDEX, dtype=np.int64)
    dec_in = np.zeros((b, dec_len), dtype=np.int64)
    if targets:
        dec_out[dec_mask] = np.concatenate(targets)
        dec_in[dec_mask] = np.concatenate([np.concatenate(([bos_id], target[:-1])) for target in targets])
    dec_positions = np.zeros((b, dec_len), dtype=np.int64)
    dec_positions[dec_mask] = _restarting_arange(dec_lens)
    dec_sample = np.full((b, dec_len), -1, dtype=np.int64)
    dec_sample[dec_mask] = np.repeat(ids, dec_lens)
    arrays = {
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
        "dataset": np.array([s.dataset for s in seqs], dtype=np.int64),
        "objective": np.array([objective_code(s.objective) for s in seqs], dtype=np.int64),
    }
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for m, dtype in patched.items():
        rows = patches[m]
        if rows:
            batch[f"patches_{m}"] = torch.cat(rows)  # uint8 pixels, float log-mel: as the patchers made them
        else:
            batch[f"patches_{m}"] = torch.zeros(0, patch_dims[m], dtype=dtype)
    return batch
