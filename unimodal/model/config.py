"""Model hyperparameters and the size presets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from unimodal.config import Attention
from unimodal.tokenize.sequence import PATCH_MODALITIES

# Body sizes. Parameter counts (count_parameters, tied LM head, the objectives' heads)
# with an 8000-token vocab, max_positions 1024 and patch dims image 768, audio 256, video 1536:
#   tiny    3.1M
#   small  66.9M
#   base  210.7M   (UnIVAL-base scale: d 768, 12 heads, 12 + 12 layers; with a vocab
#                  like UnIVAL's, ~59k = BPE + image codes + location bins, it is
#                  ~250M, UnIVAL's size: the embedding grows by 51k x 768 = 39M)
#   large  1.08B
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, n_heads=4, enc_layers=3, dec_layers=2),
    "small": dict(d_model=512, n_heads=8, enc_layers=8, dec_layers=8),
    "base": dict(d_model=768, n_heads=12, enc_layers=12, dec_layers=12),
    "large": dict(d_model=1536, n_heads=24, enc_layers=16, dec_layers=16),
}


# How attention is computed (unimodal/model/transformer.py); auto: flex on CUDA, sdpa elsewhere
AttentionKind = Literal["flex", "sdpa"]
# How the model runs, not what it is: a run may change these and still load another's weights
EXECUTION_FIELDS = ("activation_checkpointing", "attention", "attention_block", "compile")


class ModelConfig(BaseModel):
    """Everything needed to build a UnifiedModel; vocab and patch dims come from the tokenizer."""

    model_config = ConfigDict(extra="forbid")

    d_model: int
    n_heads: int
    enc_layers: int
    dec_layers: int
    mlp_ratio: float = 4.0
    max_positions: int = 1024  # longest encoder input and longest decoder input
    vocab_size: int
    patch_dims: dict[str, int]  # flat patch size per entry of PATCH_MODALITIES
    dropout: float = 0.0  # embeddings, residual branches, MLP
    # on the attention probabilities, sdpa only; 0 as in OFA and UnIVAL (attention_dropout 0.0)
    attention_dropout: float = 0.0
    activation_checkpointing: bool = False
    attention: Attention = "auto"
    attention_block: int = Field(128, gt=0)  # flex: the tile (query x key tokens) its block mask keeps or skips
    compile: bool = False  # torch.compile each Transformer block
    adapter_dim: int | None = None  # hidden width of the contrastive views' adapters; None: none

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if set(self.patch_dims) != set(PATCH_MODALITIES):
            raise ValueError(f"patch_dims keys must be {PATCH_MODALITIES}, got {sorted(self.patch_dims)}")
        if self.attention == "flex" and self.attention_dropout:
            raise ValueError(
                f"attention: flex has no attention dropout; attention_dropout is {self.attention_dropout} (use sdpa)"
            )
        return self

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, patch_dims: dict[str, int], **overrides) -> ModelConfig:
        """A preset's dims plus the tokenizer's sizes; overrides win over both."""
        fields = {**PRESETS[name], "vocab_size": vocab_size, "patch_dims": patch_dims}
        return cls(**{**fields, **overrides})


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights once); works on meta-device models."""
    return sum(p.numel() for p in model.parameters())
