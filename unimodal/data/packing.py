"""Token-budget batching: samples into rows, first fit, so ragged multimodal batches waste little.

A caption is a dozen tokens and a clip over a thousand: padding every sample
to the longest wastes most of a step. With `data.pack_length` set, samples go
back to back into rows of that many encoder tokens, in arrival order; their
decoder tokens share the row, and the decoder rows are as long as the fullest
one, so of the rows with room a sample goes to the one with the fewest decoder
tokens. Attention stays within each sample (see
`unimodal.model.transformer.attention_mask`). Without it, each sample is a row
of its own: plain padded batches. Either way a batch costs
rows x (encoder row length + decoder row length) tokens, which the loader
keeps within `data.batch_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unimodal.tokenize.sequence import TokenSequence

DEFER = 4  # samples set aside (did not fit) before a batch is closed: smaller ones drawn meanwhile fill the gaps


class RowPacker:
    """Rows of samples for one batch; `tokens_with` prices a sample before it is added."""

    def __init__(self, pack_length: int | None):
        self.pack_length = pack_length
        self.rows: list[list[TokenSequence]] = []
        self.enc: list[int] = []  # encoder tokens used per row
        self.dec: list[int] = []

    def _row_for(self, seq: TokenSequence) -> int:
        """Of the rows with encoder room, the one with the fewest decoder tokens (they set its length)."""
        if self.pack_length is not None:
            fits = [r for r, used in enumerate(self.enc) if used + seq.enc_len <= self.pack_length]
            if fits:
                return min(fits, key=lambda r: self.dec[r])
        return len(self.rows)

    def _cost(self, enc: list[int], dec: list[int]) -> int:
        return len(enc) * (max(max(enc), self.pack_length or 0) + max(dec))

    def tokens_with(self, seq: TokenSequence) -> int:
        """Tokens the batch would compute with `seq` added."""
        r = self._row_for(seq)
        enc, dec = list(self.enc), list(self.dec)
        if r == len(enc):
            enc.append(0)
            dec.append(0)
        enc[r] += seq.enc_len
        dec[r] += seq.dec_len
        return self._cost(enc, dec)

    def add(self, seq: TokenSequence) -> None:
        r = self._row_for(seq)
        if r == len(self.rows):
            self.rows.append([])
            self.enc.append(0)
            self.dec.append(0)
        self.rows[r].append(seq)
        self.enc[r] += seq.enc_len
        self.dec[r] += seq.dec_len

    @property
    def enc_length(self) -> int:
        """The batch's encoder row length: pack_length, or the fullest row if longer."""
        return max(max(self.enc), self.pack_length or 0)


Item = tuple[int, Any, TokenSequence]  # (dataset, raw sample, tokens): only the tokens' lengths count here


def fill_batch(
    next_item: Callable[[], Item], pending: list[Item], budget: int, pack_length: int | None
) -> tuple[RowPacker, list[Item]]:
    """One batch of at most `budget` tokens from `next_item()`, first fit into rows.

    An item that does not fit is set aside; once `pending` (not yet taken by
    `next_item`) and those set aside reach DEFER, the batch closes and the set-aside
    items join `pending`, to open the next batch.
    """
    packer = RowPacker(pack_length)
    items: list[Item] = []
    deferred: list[Item] = []
    while True:
        item = next_item()
        if items and packer.tokens_with(item[2]) > budget:
            deferred.append(item)
            if len(pending) + len(deferred) >= DEFER:
                break
        else:
            packer.add(item[2])
            items.append(item)
    pending += deferred
    return packer, items
