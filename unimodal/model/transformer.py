"""Pre-norm Transformer encoder and decoder stacks on top of PyTorch SDPA."""

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

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """key_mask: bool [B, S], True at context tokens that may be attended to.

        Masking keys only (never queries) keeps every softmax row non-empty, since
        each sample has at least one real token: padded queries get finite
        garbage instead of NaN, and the loss ignores them.
        """
        b, t, d = x.shape
        s, h = context.shape[1], self.n_heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
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
        enc_mask: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.ln_self(x)
        if self.decoder:
            # Decoder padding sits after the target, so the causal mask already hides it.
            x = x + self.self_attn(h, h, causal=True)
            x = x + self.cross_attn(self.ln_cross(x), memory, enc_mask)
        else:
            x = x + self.self_attn(h, h, enc_mask)
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
        enc_mask: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, enc_mask, memory, use_reentrant=False)
            else:
                x = block(x, enc_mask, memory)
        return self.ln_f(x)
