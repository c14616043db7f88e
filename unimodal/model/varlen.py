"""Variable-length attention (`model.attention: varlen`): each sample's tokens gathered into dense buckets.

A group is the tokens of one id in one row: the queries of a sample (or view)
and the keys of the same sample. Groups of equal (query count, key count) form
a bucket [G, Lq] x [G, Lk]; each bucket runs scaled_dot_product_attention with
no mask (`is_causal` for the decoder's self-attention) and the outputs go back
to their tokens. So exactly the pairs the samples need are computed, no mask is
built, and every op has a backward on every device.

The plan (which tokens go where) depends on the ids only: it is built once per
forward for each kind of attention and shared by every block. Building it reads
the ids on the host: free on CPU, a host synchronisation on a GPU (README,
"Host synchronisation").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class VarlenPlan:
    """Buckets of groups of one (query count, key count), as flat token positions.

    queries[j] [G, Lq] and keys[j] [G, Lk]: positions in the flattened [B * T]
    queries and [B * S] keys of bucket j's G groups, in row order within each
    group. gather [B * T]: each query's row in the buckets' outputs laid end to
    end, followed by one zero row for the queries no bucket holds (padding, and
    a query whose sample has no key): the dense mask gives such a query zeros,
    or, at padding, values no loss reads.
    """

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    gather: torch.Tensor
    causal: bool

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        """q [B * T, H, D], k and v [B * S, H, D] -> [B * T, H, D]."""
        outs = []
        for qi, ki in zip(self.queries, self.keys):
            y = F.scaled_dot_product_attention(
                _bucket(q, qi), _bucket(k, ki), _bucket(v, ki), dropout_p=dropout_p, is_causal=self.causal
            )
            outs.append(y.transpose(1, 2).flatten(0, 1))
        # zeros for the queries no bucket holds, still reading q, k and v: every parameter gets a gradient
        # (zero) even where no query attends (a batch without seq2seq samples decodes padding only), as ZeRO expects
        outs.append((q[:1] + k[:1] + v[:1]) * 0)
        return torch.cat(outs).index_select(0, self.gather)

    def pairs(self) -> int:
        """Query-key pairs the plan computes for one head: the sum of G x Lq x Lk (a causal bucket's full square)."""
        return sum(qi.shape[0] * qi.shape[1] * ki.shape[1] for qi, ki in zip(self.queries, self.keys))


def _bucket(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Tokens x [N, H, D] at positions [G, L] as a batch of groups [G, H, L, D]."""
    return x.index_select(0, at.flatten()).view(*at.shape, *x.shape[1:]).transpose(1, 2)


def _groups(ids: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions of the real (>= 0) tokens sorted by group (row * span + id), stably (row order
    kept within a group); each group's token count and start in that order."""
    flat = ids.flatten()
    real = (flat >= 0).nonzero().squeeze(1)
    group = real // ids.shape[1] * span + flat[real]
    positions = real[torch.argsort(group, stable=True)]
    counts = torch.bincount(group, minlength=ids.shape[0] * span)
    return positions, counts, counts.cumsum(0) - counts


def varlen_plan(query_ids: torch.Tensor, key_ids: torch.Tensor, causal: bool) -> VarlenPlan:
    """The plan for queries of ids [B, T] over keys of ids [B, S] (-1: padding): query t of row b
    attends to the keys of its row with its id (the earlier ones of the same group if causal:
    query and key ids are then the same tokens, so a group's i-th query is its i-th key)."""
    device = query_ids.device
    qid, kid = query_ids.cpu(), key_ids.cpu()  # the host sync on a GPU
    span = int(max(qid.max(), kid.max(), -1)) + 1  # ids in a row: 0 .. span - 1
    q_at, q_count, q_start = _groups(qid, span)
    k_at, k_count, k_start = _groups(kid, span)
    live = ((q_count > 0) & (k_count > 0)).nonzero().squeeze(1)
    shapes, bucket = torch.unique(torch.stack([q_count[live], k_count[live]], 1), dim=0, return_inverse=True)
    queries, keys = [], []
    for j, (lq, lk) in enumerate(shapes.tolist()):
        groups = live[bucket == j]
        queries.append(q_at[q_start[groups, None] + torch.arange(lq)])
        keys.append(k_at[k_start[groups, None] + torch.arange(lk)])
    order = torch.cat([qi.flatten() for qi in queries]) if queries else torch.zeros(0, dtype=torch.long)
    gather = torch.full((qid.numel(),), len(order), dtype=torch.long)
    gather[order] = torch.arange(len(order))
    return VarlenPlan([qi.to(device) for qi in queries], [ki.to(device) for ki in keys], gather.to(device), causal)
