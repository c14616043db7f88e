"""Pre-norm Transformer encoder and decoder stacks, with attention kept within each packed sample.

Three attention paths compute the same thing (`ModelConfig.attention`):

    sdpa  scaled_dot_product_attention with a dense bool mask [B, 1, T, S]: the
          reference. Every query-key pair of a row is computed, most of them
          masked out when samples are packed into rows.
    flex  FlexAttention with a block mask: only the (block x block) tiles that
          hold some pair of the same sample are computed, the others skipped.
    varlen  each sample's tokens gathered into dense buckets of equal lengths,
          attended without a mask (unimodal/model/varlen.py): only the pairs
          the samples need are computed.

The masks (varlen: plans) are built once per forward for each of the three kinds of attention
(encoder self, decoder causal self, decoder cross) and shared by every block.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint

from unimodal.model.config import AttentionKind, ModelConfig
from unimodal.model.varlen import VarlenPlan, varlen_plan


# FlexAttention is a template that torch.compile turns into a fused kernel; uncompiled it runs a
# dense reference. On GPUs, shapes become dynamic at their first change: ragged batches (rows,
# decoder length) reuse one kernel. On CPU, static: inductor's CPU template fails to build with
# dynamic shapes (torch 2.14), and there it serves forward only (FlexAttention has no CPU backward).
# Wrapped on first use: torch.compile's set-up costs every process that imports the model ~2 s of CPU.
@functools.cache
def compiled_flex(device_type: str) -> Callable:
    return torch.compile(flex_attention, dynamic=False) if device_type == "cpu" else torch.compile(flex_attention)


Mask = torch.Tensor | BlockMask | VarlenPlan  # a dense bool mask (sdpa), a block mask (flex), buckets (varlen)


class Attention(nn.Module):
    """Multi-head attention of queries x over a context (x itself, or the encoder memory)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.attention_dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: Mask) -> torch.Tensor:
        """mask: from `attention_mask`, True where query t may attend to context token s."""
        b, t, d = x.shape
        s, h = context.shape[1], self.n_heads
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, VarlenPlan):
            k, v = self.kv(context).view(b * s, 2, h, d // h).unbind(1)
            y = mask.attend(self.q(x).view(b * t, h, d // h), k, v, dropout)
            return self.resid_drop(self.proj(y.view(b, t, d)))
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if isinstance(mask, BlockMask):
            y = compiled_flex("cpu" if q.device.type == "cpu" else "cuda")(q, k, v, block_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden)
        self.proj = nn.Linear(hidden, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Encoder block (bidirectional self-attention) or decoder block (causal
    self-attention, then cross-attention to the encoder memory)."""

    def __init__(self, cfg: ModelConfig, decoder: bool):
        super().__init__()
        self.decoder = decoder
        self.ln_self = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg)
        if decoder:
            self.ln_cross = nn.LayerNorm(cfg.d_model)
            self.cross_attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: Mask,
        memory: torch.Tensor | None = None,
        cross_mask: Mask | None = None,
    ) -> torch.Tensor:
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, self_mask)
        if self.decoder:
            x = x + self.cross_attn(self.ln_cross(x), memory, cross_mask)
        return x + self.mlp(self.ln_mlp(x))


class Stack(nn.Module):
    """n blocks and a final LayerNorm, optionally recomputing each block in backward."""

    def __init__(self, cfg: ModelConfig, n_layers: int, decoder: bool):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, decoder) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.checkpointing = cfg.activation_checkpointing
        if cfg.compile:
            # the blocks' forward, not their module call: hooks around it (ZeRO-3's parameter gathering) stay
            # eager, outside the graph; in place, so parameter names (checkpoints) are unchanged; one graph
            # serves every block
            for block in self.blocks:
                block.forward = torch.compile(block.forward, dynamic=True)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: Mask,
        memory: torch.Tensor | None = None,
        cross_mask: Mask | None = None,
    ) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, self_mask, memory, cross_mask, use_reentrant=False)
            else:
                x = block(x, self_mask, memory, cross_mask)
        return self.ln_f(x)


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process: constant once the shapes seen stop changing."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def attention_kind(cfg: ModelConfig, device: torch.device) -> AttentionKind:
    """`auto`: flex on CUDA (its kernels train there), sdpa elsewhere (FlexAttention has no
    backward on CPU) and wherever attention dropout is on (FlexAttention has none)."""
    if cfg.attention != "auto":
        return cfg.attention
    return "flex" if device.type == "cuda" and not cfg.attention_dropout else "sdpa"


def same_sample(query_sample: torch.Tensor, key_sample: torch.Tensor, causal: bool):
    """FlexAttention's mask_mod: query q of row b attends to key kv of its own sample (earlier ones if causal).

    A padding query (-1) attends to nothing: FlexAttention gives an empty row
    zeros, no NaN, and the loss never reads it. Indexing broadcasts, so the
    same function also yields the dense mask (`block_mask`).
    """

    def mask_mod(b, h, q, kv):
        sample = query_sample[b, q]
        keep = (sample == key_sample[b, kv]) & (sample >= 0)
        return keep & (q >= kv) if causal else keep

    return mask_mod


def tile_occupancy(dense: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, T/block, S/block] twice: tiles holding some True (computed), and tiles all True (no mask_mod needed)."""
    b, t, s = dense.shape
    nq, nk = math.ceil(t / block), math.ceil(s / block)
    tiles = F.pad(dense, (0, nk * block - s, 0, nq * block - t)).view(b, nq, block, nk, block)
    return tiles.any(4).any(2), tiles.all(4).all(2)


def block_mask(query_sample: torch.Tensor, key_sample: torch.Tensor, causal: bool, block: int) -> BlockMask:
    """The flex mask of `same_sample`, its tiles found from the dense mask in a few vectorised ops
    (no per-tile mask_mod calls): [B, T, S] bools, as many as the sdpa path's mask."""
    (b, t), s = query_sample.shape, key_sample.shape[1]
    mask_mod = same_sample(query_sample, key_sample, causal)
    at = [torch.arange(n, device=query_sample.device) for n in (b, t, s)]
    dense = mask_mod(at[0][:, None, None], None, at[1][None, :, None], at[2][None, None, :])
    some, full = tile_occupancy(dense, block)

    def kv_blocks(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # per query tile: how many, which
        order = tiles.to(torch.int8).argsort(dim=-1, descending=True, stable=True)
        return tiles.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    return BlockMask.from_kv_blocks(
        *kv_blocks(some & ~full), *kv_blocks(full), BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(t, s)
    )


def attention_mask(
    query_sample: torch.Tensor,
    key_sample: torch.Tensor,
    causal: bool = False,
    kind: AttentionKind = "sdpa",
    block: int = 128,
) -> Mask:
    """The mask of `kind`: a token attends to the tokens of its own sample (earlier ones if causal).

    `*_sample` hold each token's sample number, -1 at padding. Samples packed
    into one row thus never see each other. flex: `block_mask`. varlen:
    `varlen_plan` (no mask: a padding query gets zeros). sdpa: bool
    [B, 1, T, S], where a padding query attends to everything: its softmax row
    is never empty (no NaN), and the loss ignores it.
    """
    if kind == "flex":
        return block_mask(query_sample, key_sample, causal, block)
    if kind == "varlen":
        return varlen_plan(query_sample, key_sample, causal)
    mask = query_sample[:, :, None] == key_sample[:, None, :]
    if causal:
        t = query_sample.shape[1]
        mask &= torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    return (mask | (query_sample < 0)[:, :, None])[:, None]
