"""Pre-norm Transformer encoder and decoder stacks on top of PyTorch SDPA, with per-sample attention masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unimodal.model.config import ModelConfig


class Attention(nn.Module):
    """Multi-head attention of queries x over a context (x itself, or the encoder memory)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """mask: bool [B, 1, T, S], True where query t may attend to context token s
        (see `attention_mask`: every row has at least one True, so no NaN)."""
        b, t, d = x.shape
        s, h = context.shape[1], self.n_heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
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
        self_mask: torch.Tensor,
        memory: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
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

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        memory: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, self_mask, memory, cross_mask, use_reentrant=False)
            else:
                x = block(x, self_mask, memory, cross_mask)
        return self.ln_f(x)


def attention_mask(query_sample: torch.Tensor, key_sample: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """bool [B, 1, T, S]: a token attends to the tokens of its own sample (earlier ones if causal).

    `*_sample` hold each token's sample number, -1 at padding. Samples packed
    into one row thus never see each other. A padding query may attend to
    everything: its softmax row is never empty (no NaN), and the loss ignores it.
    """
    mask = query_sample[:, :, None] == key_sample[:, None, :]
    if causal:
        t = query_sample.shape[1]
        mask &= torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    return (mask | (query_sample < 0)[:, :, None])[:, None]
